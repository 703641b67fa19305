#include "facex/align.hpp"

#include <cmath>
#include <opencv2/imgproc.hpp>
#include <stdexcept>

namespace facex {
namespace {

// The 5-point template of the ArcFace 112 x 112 crop.
const double kTemplate112[5][2] = {{38.2946, 51.6963}, {73.5318, 51.5014}, {56.0252, 71.7366},
                                   {41.5493, 92.3655}, {70.7299, 92.2041}};

// Python's round(): halves go to the even neighbour.
long round_even(double value) { return std::lrint(value); }

bool near(double a, double b, double tolerance) { return std::abs(a - b) <= tolerance; }

// (x, y, side) when the matrix maps a whole-pixel square inside the frame onto the output (a crop and a resize).
bool axis_aligned_crop(const cv::Mat& m, int height, int width, int size, cv::Rect& crop) {
    double a = m.at<double>(0, 0), b = m.at<double>(0, 1), tx = m.at<double>(0, 2);
    double c = m.at<double>(1, 0), d = m.at<double>(1, 1), ty = m.at<double>(1, 2);
    if (std::abs(b) > 1e-9 || std::abs(c) > 1e-9 || std::abs(a - d) > 1e-9 * std::abs(a) || a <= 0) return false;
    double values[3] = {(0.5 * a - 0.5 - tx) / a, (0.5 * a - 0.5 - ty) / a, size / a};
    for (double v : values)
        if (!near(v, std::nearbyint(v), 1e-6)) return false;
    int x0 = static_cast<int>(std::nearbyint(values[0])), y0 = static_cast<int>(std::nearbyint(values[1]));
    int side = static_cast<int>(std::nearbyint(values[2]));
    if (x0 < 0 || y0 < 0 || x0 + side > width || y0 + side > height || side <= 0) return false;
    crop = cv::Rect(x0, y0, side, side);
    return true;
}

cv::Mat resize_square(const cv::Mat& image, int size) {
    if (image.rows == size && image.cols == size) return image.clone();
    cv::Mat out;
    cv::resize(image, out, cv::Size(size, size), 0, 0, image.rows > size ? cv::INTER_AREA : cv::INTER_LINEAR);
    return out;
}

}  // namespace

cv::Mat template_points(int size, double margin) {
    cv::Mat points(5, 2, CV_64F);
    for (int i = 0; i < 5; ++i)
        for (int j = 0; j < 2; ++j)
            points.at<double>(i, j) = ((kTemplate112[i][j] / 112.0 - 0.5) / (1.0 + 2.0 * margin) + 0.5) * size;
    return points;
}

cv::Mat similarity_matrix(const cv::Mat& source, const cv::Mat& target) {
    if (source.rows != target.rows || source.rows < 2 || source.cols != 2 || target.cols != 2)
        throw std::invalid_argument("similarity_matrix: two matching [N x 2] point sets of at least 2 points");
    // x' = a x - b y + tx, y' = b x + a y + ty is linear in (a, b, tx, ty): one least-squares solve
    const int n = source.rows;
    cv::Mat rows(2 * n, 4, CV_64F), values(2 * n, 1, CV_64F);
    for (int i = 0; i < n; ++i) {
        double x = source.at<double>(i, 0), y = source.at<double>(i, 1);
        double first[4] = {x, -y, 1, 0}, second[4] = {y, x, 0, 1};
        for (int j = 0; j < 4; ++j) {
            rows.at<double>(i, j) = first[j];
            rows.at<double>(n + i, j) = second[j];
        }
        values.at<double>(i) = target.at<double>(i, 0);
        values.at<double>(n + i) = target.at<double>(i, 1);
    }
    cv::Mat solution;
    cv::solve(rows, values, solution, cv::DECOMP_SVD);
    double a = solution.at<double>(0), b = solution.at<double>(1);
    return (cv::Mat_<double>(2, 3) << a, -b, solution.at<double>(2), b, a, solution.at<double>(3));
}

cv::Mat five_points(const cv::Mat& landmarks) {
    cv::Mat points;
    landmarks.convertTo(points, CV_64F);
    points = points.reshape(1, static_cast<int>(points.total() / 2));
    if (points.rows == 5) return points;
    if (points.rows != 68) throw std::invalid_argument("landmarks must be 5 or 68 points");
    cv::Mat out(5, 2, CV_64F);
    cv::Mat left, right;
    cv::reduce(points.rowRange(36, 42), left, 0, cv::REDUCE_AVG);
    cv::reduce(points.rowRange(42, 48), right, 0, cv::REDUCE_AVG);
    left.copyTo(out.row(0));
    right.copyTo(out.row(1));
    points.row(30).copyTo(out.row(2));
    points.row(48).copyTo(out.row(3));
    points.row(54).copyTo(out.row(4));
    return out;
}

cv::Mat alignment_matrix(const cv::Mat& points, int size, double margin) {
    return similarity_matrix(five_points(points), template_points(size, margin));
}

cv::Mat resize_matrix(int height, int width, int size) {
    int side = std::min(height, width);
    double scale = static_cast<double>(size) / side;
    int x0 = (width - side) / 2, y0 = (height - side) / 2;
    return (cv::Mat_<double>(2, 3) << scale, 0, 0.5 * scale - 0.5 - x0 * scale,
                                      0, scale, 0.5 * scale - 0.5 - y0 * scale);
}

cv::Mat warp(const cv::Mat& image, const cv::Mat& matrix, int size) {
    cv::Rect crop;
    if (axis_aligned_crop(matrix, image.rows, image.cols, size, crop)) return resize_square(image(crop), size);
    double scale = std::sqrt(std::abs(cv::determinant(matrix.colRange(0, 2))));
    cv::Mat source = image, transform = matrix.clone();
    if (scale < 0.95) {
        // area-average the frame to about the output's scale first: bilinear sampling alone aliases
        int width = std::max(1L, round_even(image.cols * scale)), height = std::max(1L, round_even(image.rows * scale));
        cv::resize(image, source, cv::Size(width, height), 0, 0, cv::INTER_AREA);
        double sx = static_cast<double>(width) / image.cols, sy = static_cast<double>(height) / image.rows;
        cv::Mat to_source = (cv::Mat_<double>(3, 3) << 1 / sx, 0, 0.5 / sx - 0.5, 0, 1 / sy, 0.5 / sy - 0.5, 0, 0, 1);
        transform = matrix * to_source;
    }
    cv::Mat out;
    cv::warpAffine(source, out, transform, cv::Size(size, size), cv::INTER_LINEAR, cv::BORDER_REPLICATE);
    return out;
}

void append_input(const cv::Mat& face, std::vector<float>& out) {
    const int pixels = face.rows * face.cols;
    std::size_t start = out.size();
    out.resize(start + 3 * static_cast<std::size_t>(pixels));
    float* channels[3] = {&out[start], &out[start + pixels], &out[start + 2 * pixels]};
    for (int y = 0; y < face.rows; ++y) {
        const cv::Vec3b* row = face.ptr<cv::Vec3b>(y);
        for (int x = 0; x < face.cols; ++x)
            for (int c = 0; c < 3; ++c) *channels[c]++ = row[x][c] / 255.0f;
    }
}

cv::Mat SteadyPoints::operator()(const cv::Mat& points) {
    if (points.empty()) return cv::Mat();
    cv::Mat current;
    points.convertTo(current, CV_64F);
    if (!points_.empty()) {
        double eyes = cv::norm(points_.row(1) - points_.row(0));
        if (eyes == 0) eyes = 1.0;
        double moved = cv::norm(current - points_, cv::NORM_INF);
        if (moved <= tolerance_ * eyes) return points_;
    }
    points_ = current.clone();
    return points_;
}

}  // namespace facex
