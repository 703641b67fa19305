// The AU model's two outputs as OpenFace's columns, by the AU contract's rule (au/contract.py): every AUxx_r
// (intensity 0-5, 0 where the AU does not occur), then every AUxx_c (1 where the probability reaches the
// threshold), then every AUxx_p (the probability).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace facex {

struct AuColumn {
    std::string name;  // "AU01_r", "AU01_c", "AU01_p", ...
    double value;
};

// One face: `prob` and `intensity` hold K values each, in the order of `aus` (the metadata's `aus`).
std::vector<AuColumn> openface_columns(const float* prob, const float* intensity, const std::vector<std::string>& aus,
                                       double threshold);

}  // namespace facex
