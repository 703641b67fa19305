// facex_bench CASE_DIR: per-frame time of each facex_core part on the frames bench/bench_cpp.py wrote (the same
// frames the Python side is timed on), as one JSON object of milliseconds per frame:
//   crop        the similarity warp of a frame onto a 224 px face (frame.npy, points.npy)
//   clip_buffer one push into a 16-frame clip buffer of 224 px faces at 30 fps, stride 8, clips gathered
//   features    optical flow from frame t - k and the pooled region motion, 128 px grey faces (faces.npy)
//   postprocess scores -> intervals, per scored frame (scores.npy, spec.json)
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "facex/align.hpp"
#include "facex/clip_buffer.hpp"
#include "facex/json.hpp"
#include "facex/npy.hpp"
#include "facex/spotting.hpp"

namespace {

template <class F>
double ms_per(int count, F&& body) {
    body(0);  // warm-up
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < count; ++i) body(i);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / count;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: facex_bench CASE_DIR\n");
        return 2;
    }
    const std::string dir = argv[1];
    facex::Json spec = facex::Json::parse_file(dir + "/spec.json");

    facex::NpyArray frames = facex::read_npy(dir + "/frames.npy");  // [F, H, W, 3]
    std::vector<double> p = facex::read_npy(dir + "/points.npy").values();  // [F, 5, 2]
    const int count = static_cast<int>(frames.shape[0]);
    std::vector<cv::Mat> points;
    for (int i = 0; i < count; ++i) {
        cv::Mat m(5, 2, CV_64F);
        for (int j = 0; j < 10; ++j) m.at<double>(j / 2, j % 2) = p[i * 10 + j];
        points.push_back(m);
    }
    std::vector<cv::Mat> faces(count);
    double crop = ms_per(count, [&](int i) { faces[i] = facex::warp(facex::frame_view(frames, i), facex::alignment_matrix(points[i], 224, 0.15), 224); });

    facex::ClipBuffer buffer(16, 0.5, 30.0, 8);
    std::size_t gathered = 0;
    double clip = ms_per(count, [&](int i) {
        if (auto c = buffer.push(faces[i], i)) gathered += c->size();
    });

    facex::FeatureSettings settings = facex::FeatureSettings::from_json(spec["feature_settings"]);
    facex::FlowFeatures maker(settings);
    facex::NpyArray grey = facex::read_npy(dir + "/faces.npy");  // [T, S, S]
    const int frames_grey = static_cast<int>(grey.shape[0]), k = settings.gap(30.0);
    double features = ms_per(frames_grey - k, [&](int i) {
        std::vector<float> v = maker.pooled(maker.flow(facex::frame_view(grey, i), facex::frame_view(grey, i + k)));
        (void)v;
    });

    std::vector<double> s = facex::read_npy(dir + "/scores.npy").values();
    std::vector<float> scores(s.begin(), s.end());
    std::vector<std::int64_t> numbers(scores.size() / 6);
    for (std::size_t i = 0; i < numbers.size(); ++i) numbers[i] = static_cast<std::int64_t>(i);
    facex::SpottingSettings spotting;
    for (const auto& [type, value] : spec["thresholds"].object()) spotting.thresholds[type] = value.number();
    spotting.boundary = spec["boundary"].number();
    spotting.min_gap_seconds = spec["min_gap_seconds"].number();
    facex::SpotSettings post = spotting.spot_settings(30.0, 1);
    const int repeats = 20;
    double postprocess = ms_per(repeats, [&](int) { auto found = facex::spot(scores, numbers, post, 1); (void)found; }) /
                         static_cast<double>(numbers.size());

    std::printf("{\"crop\": %.6f, \"clip_buffer\": %.6f, \"features\": %.6f, \"postprocess\": %.6f, \"clip_frames\": %zu}\n",
                crop, clip, features, postprocess, gathered);
    return 0;
}
