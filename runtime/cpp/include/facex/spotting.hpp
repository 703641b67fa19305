// Spotting on the application side: the facial-motion features (spotting/features.py), scores -> intervals
// (spotting/postprocess.py), and the streaming spotter whose intervals equal offline spotting
// (runtime.stream.StreamingSpotter).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <opencv2/core.hpp>
#include <opencv2/video/tracking.hpp>
#include <optional>
#include <string>
#include <vector>

#include "facex/json.hpp"
#include "facex/npy.hpp"

namespace facex {

inline const std::vector<std::string> kTypes = {"macro", "micro"};

// How features are made: the model's `feature_settings` metadata (a JSON object).
struct FeatureSettings {
    int size = 128;
    double margin = 0.15;
    std::optional<int> k;  // frames between the two faces of a flow, after subsampling; none: 0.1 s
    std::string method = "dis";
    double target_fps = 30.0;
    std::vector<std::string> regions;
    std::string detector = "auto";

    static FeatureSettings from_json(const Json& value);
    int dim() const { return 3 * (static_cast<int>(regions.size()) - 1) + 2; }
    int step(double fps) const;  // subsampling of a video at `fps`
    int gap(double fps) const;   // k, in kept frames
};

struct RegionBox {
    int x0, y0, x1, y1;
};
std::vector<RegionBox> region_boxes(const FeatureSettings& settings);

// Aligned grey faces (uint8, size x size) -> per-frame region motion [D].
class FlowFeatures {
  public:
    explicit FlowFeatures(const FeatureSettings& settings);
    cv::Mat flow(const cv::Mat& from, const cv::Mat& to);    // [S, S] CV_32FC2
    std::vector<float> pooled(const cv::Mat& flow) const;   // [D]
    const std::vector<RegionBox>& boxes() const { return boxes_; }

  private:
    FeatureSettings settings_;
    std::vector<RegionBox> boxes_;
    double iod_;
    cv::Ptr<cv::DISOpticalFlow> dis_;
};

// ---------------------------------------------------------------- scores -> intervals

struct Interval {
    std::int64_t onset, apex, offset;
    std::string type;  // "macro" | "micro"
    double score;
    std::int64_t length() const { return offset - onset + 1; }
};

struct SpotSettings {
    std::map<std::string, double> thresholds;                                     // actionness an apex must reach
    std::map<std::string, std::pair<std::optional<int>, std::optional<int>>> lengths;  // source frames
    double boundary = 0.5;
    std::map<std::string, int> min_gap;  // score frames between two apexes of one type
    int gap(const std::string& type) const;
};

std::map<std::string, std::pair<std::optional<int>, std::optional<int>>> plausible_lengths(double fps);
double iou(std::int64_t a0, std::int64_t a1, std::int64_t b0, std::int64_t b1);  // inclusive frame intervals

// scores: T rows of the six sigmoid scores (macro action/start/end, micro action/start/end); numbers: the frame
// number of each row; step: the subsampling (an offset covers the source frames up to the next kept one).
std::vector<Interval> proposals(const std::vector<float>& scores, const std::vector<std::int64_t>& numbers,
                                const SpotSettings& settings, int step);
std::vector<Interval> select(const std::vector<Interval>& found, const std::map<std::string, double>& thresholds);
std::vector<Interval> spot(const std::vector<float>& scores, const std::vector<std::int64_t>& numbers,
                           const SpotSettings& settings, int step);

// ---------------------------------------------------------------- streaming

// features [frames x dim] -> scores [frames x 6]: the spotting model on one window.
using ScoreFunction = std::function<std::vector<float>(const std::vector<float>& features, int frames, int dim)>;

struct SpottingSettings {  // what the spotting model's metadata says
    FeatureSettings features;
    std::map<std::string, double> thresholds;
    double boundary = 0.5;
    double min_gap_seconds = 0.3;
    int receptive_radius = 0;
    SpotSettings spot_settings(double fps, int step) const;
};

class StreamingSpotter {
  public:
    StreamingSpotter(ScoreFunction scores, const SpottingSettings& settings, double source_fps, int chunk = 64);
    // One aligned grey face of the video (every frame, in order); the intervals that became final.
    std::vector<Interval> push(const cv::Mat& grey_face, std::int64_t number);
    std::vector<Interval> flush();

    int step() const { return step_; }
    int margin() const { return margin_; }
    const std::vector<float>& features() const { return features_; }  // [frames x dim]
    const std::vector<float>& scores() const { return scores_; }      // [scored frames x 6]

  private:
    void score(bool final);
    std::vector<Interval> emit(bool final);

    ScoreFunction score_fn_;
    FeatureSettings features_settings_;
    int step_, k_, radius_, chunk_, dim_;
    double fps_;
    SpotSettings settings_;
    int margin_;
    FlowFeatures maker_;
    std::deque<cv::Mat> faces_;
    std::vector<float> features_;
    std::vector<std::int64_t> numbers_;
    std::vector<float> scores_;
    std::int64_t seen_ = 0;
    std::size_t cut_ = 0;
};

// Streaming over scores recorded for the whole video (golden vectors, a model run offline): a window's scores are
// its rows of the recording, exact because the spotting network sees only nearby frames. It checks the streaming
// mechanics (features, windows, emission) apart from a model.
struct RecordedStream {
    std::vector<Interval> intervals;
    std::vector<float> features;  // [frames x dim]
    int step = 1;
};
RecordedStream stream_recorded(const std::vector<double>& recorded_scores, const SpottingSettings& settings,
                               double source_fps, const NpyArray& grey_faces, const std::vector<double>& numbers,
                               int chunk = 64);

}  // namespace facex
