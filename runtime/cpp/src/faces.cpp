#include "facex/faces.hpp"

#include <stdexcept>

#include "facex/align.hpp"

#ifdef FACEX_WITH_DLIB
#include <dlib/image_processing.h>
#include <dlib/image_processing/frontal_face_detector.h>
#include <dlib/opencv.h>
#endif

namespace facex {

#ifdef FACEX_WITH_DLIB
struct FaceFinder::Dlib {
    dlib::frontal_face_detector faces = dlib::get_frontal_face_detector();
    dlib::shape_predictor shape;

    cv::Mat points(const cv::Mat& rgb) {
        cv::Mat contiguous = rgb.isContinuous() ? rgb : rgb.clone();
        dlib::cv_image<dlib::rgb_pixel> image(contiguous);
        // small frames: faces under about 80 px need one upsampling
        const int upsample = std::min(rgb.rows, rgb.cols) < 400 ? 1 : 0;
        std::vector<dlib::rectangle> found = faces(image, upsample);
        if (found.empty()) return cv::Mat();
        const dlib::rectangle* largest = &found[0];
        for (const auto& r : found)
            if (r.width() * r.height() > largest->width() * largest->height()) largest = &r;
        dlib::full_object_detection shape_found = shape(image, *largest);
        cv::Mat landmarks(68, 2, CV_64F);
        for (int i = 0; i < 68; ++i) {
            landmarks.at<double>(i, 0) = shape_found.part(i).x();
            landmarks.at<double>(i, 1) = shape_found.part(i).y();
        }
        return five_points(landmarks);
    }
};
bool dlib_available() { return true; }
#else
struct FaceFinder::Dlib {
    cv::Mat points(const cv::Mat&) { return cv::Mat(); }
};
bool dlib_available() { return false; }
#endif

FaceFinder::FaceFinder(const std::string& detector, const std::string& landmark_model) : name_(detector) {
    if (name_ == "auto") name_ = dlib_available() && !landmark_model.empty() ? "dlib" : "none";
    if (name_ == "none") return;
    if (name_ != "dlib") throw std::invalid_argument("detector '" + detector + "': expected none, dlib or auto");
#ifdef FACEX_WITH_DLIB
    if (landmark_model.empty())
        throw std::invalid_argument("detector dlib needs the 68-point model file (shape_predictor_68_face_landmarks.dat)");
    dlib_ = std::make_unique<Dlib>();
    try {
        dlib::deserialize(landmark_model) >> dlib_->shape;
    } catch (const std::exception& error) {
        throw std::invalid_argument(landmark_model + ": cannot read the landmark model (" + error.what() + ")");
    }
#else
    throw std::invalid_argument("detector dlib: this build has no dlib (configure with dlib installed)");
#endif
}

FaceFinder::~FaceFinder() = default;
FaceFinder::FaceFinder(FaceFinder&&) noexcept = default;
FaceFinder& FaceFinder::operator=(FaceFinder&&) noexcept = default;

bool FaceFinder::detects() const { return name_ != "none"; }

cv::Mat FaceFinder::points(const cv::Mat& rgb) const { return dlib_ ? dlib_->points(rgb) : cv::Mat(); }

cv::Mat FaceFinder::crop(const cv::Mat& rgb, const cv::Mat& points, int size, double margin) const {
    if (points.empty()) return warp(rgb, resize_matrix(rgb.rows, rgb.cols, size), size);
    return warp(rgb, alignment_matrix(points, size, margin), size);
}

}  // namespace facex
