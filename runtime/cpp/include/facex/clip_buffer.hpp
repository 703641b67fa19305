// The micro-expression model's 16-frame clips from a camera stream, as runtime.stream.ClipBuffer makes them: a
// clip is `length` frames at evenly spaced times over the last `span` seconds ending at the newest frame, each
// time taking the buffered frame nearest to it (any camera rate: a slow camera repeats frames, a fast one skips
// them); once the buffer covers the span a clip is due every `stride` frames; flush() ends a stream.
#pragma once

#include <cstdint>
#include <deque>
#include <opencv2/core.hpp>
#include <optional>
#include <utility>
#include <vector>

namespace facex {

class ClipBuffer {
  public:
    ClipBuffer(int length = 16, double span = 0.5, double camera_fps = 30.0, int stride = 8);

    // Add a frame (its number defaults to a running count); the clip's frames when one is due.
    std::optional<std::vector<cv::Mat>> push(const cv::Mat& frame, std::optional<std::int64_t> number = {});
    std::optional<std::vector<cv::Mat>> flush();
    std::vector<std::int64_t> sample_numbers() const;  // frame numbers of the clip that would be emitted now

    int length() const { return length_; }
    double span() const { return span_; }
    int stride() const { return stride_; }
    std::size_t capacity() const { return capacity_; }

  private:
    std::vector<cv::Mat> clip();

    int length_;
    double span_, camera_fps_;
    int stride_;
    std::size_t capacity_;
    std::deque<std::pair<std::int64_t, cv::Mat>> frames_;
    int since_clip_ = 0;
    std::int64_t count_ = 0;
};

}  // namespace facex
