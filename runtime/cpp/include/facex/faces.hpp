// Where a face is in a camera frame: five landmarks from a detector, or none (the frames are faces already), and
// the crop a model takes (facex::warp onto the model's template). The application may also pass its own five
// points to the pipeline and skip detection.
#pragma once

#include <memory>
#include <opencv2/core.hpp>
#include <string>

namespace facex {

class FaceFinder {
  public:
    // detector: "none" (each frame is the face: its centre square is resized), or "dlib" (HOG face detector and
    // the 68-point shape predictor in `landmark_model`, the same file the Python side uses; built with
    // FACEX_WITH_DLIB), or "auto" (dlib where built and a model file is given, else none).
    explicit FaceFinder(const std::string& detector = "none", const std::string& landmark_model = "");
    ~FaceFinder();
    FaceFinder(FaceFinder&&) noexcept;
    FaceFinder& operator=(FaceFinder&&) noexcept;

    bool detects() const;                           // false for "none"
    const std::string& name() const { return name_; }
    cv::Mat points(const cv::Mat& rgb) const;       // [5 x 2] CV_64F of the largest face; empty: no face
    cv::Mat crop(const cv::Mat& rgb, const cv::Mat& points, int size, double margin) const;  // empty points: resize

  private:
    struct Dlib;
    std::string name_;
    std::unique_ptr<Dlib> dlib_;
};

bool dlib_available();  // built with dlib

}  // namespace facex
