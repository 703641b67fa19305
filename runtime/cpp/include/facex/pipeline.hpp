// Camera frames through every model of a folder, as `python -m runtime` does (runtime/pipeline.py): one face per
// frame, each model's crop from its metadata; image models per frame, the micro-expression model through the
// clip buffer, streaming spotting, and spot-then-recognise (each spotted micro interval classified as a clip).
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "facex/align.hpp"
#include "facex/clip_buffer.hpp"
#include "facex/faces.hpp"
#include "facex/model.hpp"
#include "facex/spotting.hpp"

namespace facex {

inline const std::vector<std::string> kTaskOrder = {"emotion", "au", "microexp", "spotting"};

using Models = std::map<std::string, std::shared_ptr<Model>>;

// {task: model} for the .onnx files of a folder, one per task. A file the contract's check refuses stops
// everything with `strict`; without, it is left out and (file, reason) appended to `refused`, and only a folder
// where nothing can be served is an error.
Models find_models(const std::string& folder, const ModelOptions& options = {}, bool strict = true,
                   std::vector<std::pair<std::string, std::string>>* refused = nullptr);

struct Cell {  // a CSV value: text, a number written with 6 decimals, or an integer
    enum class Kind { Text, Number, Integer } kind = Kind::Text;
    std::string text;
    double number = 0;
};

struct FrameResult {
    std::int64_t number = 0;
    double time = 0;
    bool face = false;
    std::optional<std::array<double, 4>> box;      // x, y, width, height
    std::vector<std::pair<std::string, Cell>> columns;  // model columns, in the CSV's order
    std::vector<Interval> intervals;                // spotted intervals that became final at this frame
};

struct Recognised {
    std::int64_t onset, apex, offset;
    std::string emotion;
    std::vector<float> probs;
};

// Each micro interval the spotter emits, sampled into a clip (uniform onset..offset, as training) from a history
// of aligned faces and classified by the micro-expression model.
class SpotThenRecognise {
  public:
    SpotThenRecognise(std::shared_ptr<Model> model, std::size_t history);
    void push(const cv::Mat& face, std::int64_t number);
    std::optional<Recognised> recognise(const Interval& interval) const;

  private:
    std::shared_ptr<Model> model_;
    std::size_t history_;
    int length_;
    std::map<std::int64_t, cv::Mat> faces_;
    std::deque<std::int64_t> order_;
};

class Pipeline {
  public:
    Pipeline(Models models, double fps, FaceFinder faces, int clip_stride = 8, double steady_tolerance = 0.15);

    std::vector<std::string> columns() const;  // the CSV header
    // One RGB frame (CV_8UC3). `points`: the application's own five points [5 x 2]; empty: the finder's.
    FrameResult frame(const cv::Mat& rgb, std::int64_t number, const cv::Mat& points = cv::Mat());
    std::vector<Interval> finish();  // end of the stream: the last intervals
    std::map<std::string, std::string> row(const FrameResult& result) const;
    const std::vector<Recognised>& recognised() const { return recognised_; }
    const Models& models() const { return models_; }

  private:
    struct Crop {
        int size;
        double margin;
    };
    void decode(const std::string& task, const Outputs& out, FrameResult& result) const;
    void recognise(const std::vector<Interval>& intervals);

    Models models_;
    double fps_;
    FaceFinder faces_;
    SteadyPoints steady_;
    std::map<std::string, Crop> crops_;
    std::unique_ptr<ClipBuffer> clips_;
    std::unique_ptr<StreamingSpotter> spotter_;
    std::unique_ptr<SpotThenRecognise> recogniser_;
    std::vector<Recognised> recognised_;
};

}  // namespace facex
