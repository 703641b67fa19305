// Face crops as the training data was cut: the least-squares similarity transform from five landmarks onto the
// model's template, and the warp with the same rules as common/data/align.py (a whole-pixel crop-and-resize where
// the transform is one, area averaging before a shrinking warp, bilinear warp, replicated border).
#pragma once

#include <opencv2/core.hpp>
#include <vector>

namespace facex {

// Five points [5 x 2] CV_64F: left eye, right eye, nose tip, left mouth corner, right mouth corner, in image pixels
// ("left" is the image's left).
cv::Mat template_points(int size, double margin);
cv::Mat similarity_matrix(const cv::Mat& source, const cv::Mat& target);  // 2 x 3 CV_64F, source -> target
cv::Mat alignment_matrix(const cv::Mat& points, int size, double margin);
cv::Mat resize_matrix(int height, int width, int size);  // the centre square scaled to `size` (frames that are faces)
cv::Mat five_points(const cv::Mat& landmarks);           // from 5 points, or iBUG-68 landmarks [68 x 2]

// The size x size crop that `matrix` (source pixels -> crop pixels) describes; `image` is uint8 RGB (CV_8UC3).
cv::Mat warp(const cv::Mat& image, const cv::Mat& matrix, int size);

// uint8 RGB [S, S, 3] -> float32 CHW in [0, 1], appended to `out` (a clip is its frames one after another).
void append_input(const cv::Mat& face, std::vector<float>& out);

// The clip models' transform: a reference frame's points are kept while the detected face stays within
// `tolerance` x the eye distance of them, so the motion the model sees is the face's, not the detector's jitter.
class SteadyPoints {
  public:
    explicit SteadyPoints(double tolerance = 0.15) : tolerance_(tolerance) {}
    cv::Mat operator()(const cv::Mat& points);  // empty in, empty out
    void reset() { points_.release(); }

  private:
    double tolerance_;
    cv::Mat points_;
};

}  // namespace facex
