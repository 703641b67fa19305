// NumPy .npy files (format 1.0-3.0, little-endian, C order): the golden vectors and the test cases are written
// by Python with numpy.save.
#pragma once

#include <cstdint>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

namespace facex {

struct NpyArray {
    std::vector<std::size_t> shape;
    char kind = 'f';      // 'f' float, 'i' signed, 'u' unsigned, 'b' bool
    int itemsize = 4;
    std::vector<unsigned char> bytes;

    std::size_t count() const;
    std::vector<double> values() const;  // every element, converted
    std::string describe() const;        // "float32 [1, 3, 224, 224]"
};

NpyArray read_npy(const std::string& path);  // throws std::runtime_error naming the file
// Views of the array's bytes (valid while the array lives; clone to keep): a uint8 image [H, W] or [H, W, 3], and
// image `index` of a uint8 stack [T, H, W] or [T, H, W, 3].
cv::Mat image_view(const NpyArray& a);
cv::Mat frame_view(const NpyArray& a, std::size_t index);
// The first rows x cols values as a float64 matrix (landmarks [5, 2], a similarity transform [2, 3]).
cv::Mat matrix_of(const NpyArray& a, int rows, int cols);

void write_npy(const std::string& path, const std::vector<float>& values, const std::vector<std::size_t>& shape);

}  // namespace facex
