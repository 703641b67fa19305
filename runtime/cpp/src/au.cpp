#include "facex/au.hpp"

namespace facex {

std::vector<AuColumn> openface_columns(const float* prob, const float* intensity, const std::vector<std::string>& aus,
                                       double threshold) {
    const float at = static_cast<float>(threshold);  // compared in float32, as NumPy compares the float32 outputs
    std::vector<AuColumn> columns;
    columns.reserve(3 * aus.size());
    for (std::size_t k = 0; k < aus.size(); ++k)
        columns.push_back({aus[k] + "_r", prob[k] >= at ? static_cast<double>(intensity[k]) : 0.0});
    for (std::size_t k = 0; k < aus.size(); ++k) columns.push_back({aus[k] + "_c", prob[k] >= at ? 1.0 : 0.0});
    for (std::size_t k = 0; k < aus.size(); ++k) columns.push_back({aus[k] + "_p", static_cast<double>(prob[k])});
    return columns;
}

}  // namespace facex
