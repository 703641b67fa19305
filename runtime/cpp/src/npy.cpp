#include "facex/npy.hpp"

#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>

namespace facex {

std::size_t NpyArray::count() const {
    std::size_t n = 1;
    for (std::size_t d : shape) n *= d;
    return n;
}

std::vector<double> NpyArray::values() const {
    std::vector<double> out(count());
    const unsigned char* p = bytes.data();
    for (std::size_t i = 0; i < out.size(); ++i, p += itemsize) {
        if (kind == 'f' && itemsize == 4) { float v; std::memcpy(&v, p, 4); out[i] = v; }
        else if (kind == 'f' && itemsize == 8) { double v; std::memcpy(&v, p, 8); out[i] = v; }
        else if (kind == 'i' && itemsize == 8) { std::int64_t v; std::memcpy(&v, p, 8); out[i] = static_cast<double>(v); }
        else if (kind == 'i' && itemsize == 4) { std::int32_t v; std::memcpy(&v, p, 4); out[i] = v; }
        else if ((kind == 'u' || kind == 'b') && itemsize == 1) { out[i] = *p; }
        else throw std::runtime_error("npy: unsupported dtype " + describe());
    }
    return out;
}

std::string NpyArray::describe() const {
    std::ostringstream s;
    const char* name = kind == 'f' ? "float" : kind == 'i' ? "int" : kind == 'b' ? "bool" : "uint";
    s << name << itemsize * 8 << " [";
    for (std::size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << "]";
    return s.str();
}

NpyArray read_npy(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw std::runtime_error(path + ": cannot open");
    char magic[8];
    file.read(magic, 8);
    if (!file || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + ": not a .npy file");
    std::uint32_t header_length = 0;
    if (magic[6] == 1) {
        unsigned char two[2];
        file.read(reinterpret_cast<char*>(two), 2);
        header_length = two[0] | (two[1] << 8);
    } else {
        unsigned char four[4];
        file.read(reinterpret_cast<char*>(four), 4);
        header_length = four[0] | (four[1] << 8) | (four[2] << 16) | (static_cast<std::uint32_t>(four[3]) << 24);
    }
    std::string header(header_length, '\0');
    file.read(header.data(), header_length);
    std::smatch found;
    if (!std::regex_search(header, found, std::regex("'descr':\\s*'([<|>=])([fiub])(\\d+)'")))
        throw std::runtime_error(path + ": no dtype in the header");
    NpyArray array;
    if (found[1] == ">") throw std::runtime_error(path + ": big-endian data");
    array.kind = found[2].str()[0];
    array.itemsize = std::stoi(found[3]);
    if (std::regex_search(header, std::regex("'fortran_order':\\s*True")))
        throw std::runtime_error(path + ": Fortran order is not supported");
    if (!std::regex_search(header, found, std::regex("'shape':\\s*\\(([^)]*)\\)")))
        throw std::runtime_error(path + ": no shape in the header");
    std::string dims = found[1];
    std::regex number("\\d+");
    for (auto it = std::sregex_iterator(dims.begin(), dims.end(), number); it != std::sregex_iterator(); ++it)
        array.shape.push_back(std::stoull(it->str()));
    array.bytes.resize(array.count() * array.itemsize);
    file.read(reinterpret_cast<char*>(array.bytes.data()), static_cast<std::streamsize>(array.bytes.size()));
    if (!file) throw std::runtime_error(path + ": data cut short");
    return array;
}

namespace {

cv::Mat uint8_view(const NpyArray& a, std::size_t first_axis, std::size_t offset, const char* what) {
    const std::size_t rank = a.shape.size() - first_axis;
    if (a.kind != 'u' || a.itemsize != 1 || rank < 2 || rank > 3 || (rank == 3 && a.shape.back() != 3))
        throw std::runtime_error("npy: " + a.describe() + " is not " + what);
    return cv::Mat(static_cast<int>(a.shape[first_axis]), static_cast<int>(a.shape[first_axis + 1]),
                   rank == 3 ? CV_8UC3 : CV_8UC1, const_cast<unsigned char*>(a.bytes.data() + offset));
}

}  // namespace

cv::Mat image_view(const NpyArray& a) { return uint8_view(a, 0, 0, "a uint8 image [H, W(, 3)]"); }

cv::Mat frame_view(const NpyArray& a, std::size_t index) {
    if (a.shape.empty() || index >= a.shape[0])
        throw std::runtime_error("npy: no frame " + std::to_string(index) + " in " + a.describe());
    return uint8_view(a, 1, index * (a.count() / a.shape[0]), "a uint8 stack [T, H, W(, 3)]");
}

cv::Mat matrix_of(const NpyArray& a, int rows, int cols) {
    std::vector<double> v = a.values();
    if (v.size() < static_cast<std::size_t>(rows * cols))
        throw std::runtime_error("npy: " + a.describe() + " has fewer than " + std::to_string(rows * cols) + " values");
    cv::Mat m(rows, cols, CV_64F);
    for (int i = 0; i < rows * cols; ++i) m.at<double>(i / cols, i % cols) = v[i];
    return m;
}

void write_npy(const std::string& path, const std::vector<float>& values, const std::vector<std::size_t>& shape) {
    std::ostringstream dims;
    for (std::size_t d : shape) dims << d << ", ";
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims.str() + "), }";
    while ((10 + header.size() + 1) % 64) header += ' ';
    header += '\n';
    std::ofstream file(path, std::ios::binary);
    if (!file) throw std::runtime_error(path + ": cannot write");
    file.write("\x93NUMPY\x01\x00", 8);
    unsigned char length[2] = {static_cast<unsigned char>(header.size() & 0xFF),
                               static_cast<unsigned char>(header.size() >> 8)};
    file.write(reinterpret_cast<const char*>(length), 2);
    file.write(header.data(), static_cast<std::streamsize>(header.size()));
    file.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * 4));
}

}  // namespace facex
