#include "facex/clip_buffer.hpp"

#include <cmath>
#include <map>
#include <stdexcept>

namespace facex {

ClipBuffer::ClipBuffer(int length, double span, double camera_fps, int stride)
    : length_(length), span_(span), camera_fps_(camera_fps), stride_(stride) {
    if (length < 1 || span <= 0 || camera_fps <= 0 || stride < 1)
        throw std::invalid_argument("ClipBuffer needs length >= 1, span > 0, camera_fps > 0, stride >= 1");
    capacity_ = static_cast<std::size_t>(std::ceil(span * camera_fps)) + 1;
}

std::optional<std::vector<cv::Mat>> ClipBuffer::push(const cv::Mat& frame, std::optional<std::int64_t> number) {
    std::int64_t n = number.value_or(count_);
    ++count_;
    frames_.emplace_back(n, frame.clone());
    if (frames_.size() > capacity_) frames_.pop_front();
    ++since_clip_;
    bool covered = (frames_.back().first - frames_.front().first) / camera_fps_ >= span_ - 1e-9;
    if (covered && since_clip_ >= stride_) return clip();
    return std::nullopt;
}

std::optional<std::vector<cv::Mat>> ClipBuffer::flush() {
    if (!frames_.empty() && since_clip_ > 0 && count_ > 0) return clip();
    return std::nullopt;
}

std::vector<std::int64_t> ClipBuffer::sample_numbers() const {
    std::vector<std::int64_t> chosen;
    if (frames_.empty()) return chosen;
    const double last = static_cast<double>(frames_.back().first);
    for (int i = 0; i < length_; ++i) {
        // numpy.linspace(span, 0, length): span + i * (0 - span) / (length - 1), its last value exactly 0
        double offset = length_ == 1 ? span_ : (i == length_ - 1 ? 0.0 : span_ + i * (-span_ / (length_ - 1)));
        double time = last - offset * camera_fps_;
        std::size_t best = 0;
        double best_distance = INFINITY;
        for (std::size_t j = 0; j < frames_.size(); ++j) {
            double distance = std::abs(static_cast<double>(frames_[j].first) - time);
            if (distance < best_distance) {  // the first of equals, as numpy's argmin
                best_distance = distance;
                best = j;
            }
        }
        chosen.push_back(frames_[best].first);
    }
    return chosen;
}

std::vector<cv::Mat> ClipBuffer::clip() {
    since_clip_ = 0;
    std::map<std::int64_t, cv::Mat> by_number;
    for (const auto& [n, frame] : frames_) by_number[n] = frame;  // a repeated number: the newest frame
    std::vector<cv::Mat> out;
    for (std::int64_t n : sample_numbers()) out.push_back(by_number[n]);
    return out;
}

}  // namespace facex
