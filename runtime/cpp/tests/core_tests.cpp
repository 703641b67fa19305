// Unit tests of facex_core. Self-contained checks always run; with FACEX_CASES naming a folder of cases that the
// Python code wrote (tests/test_cpp_runtime.py), each core part is also compared with the Python reference:
// clip-buffer frame numbers, crops of rotated, shrunk and frame-filling faces, region boxes, post-processing,
// streaming against offline spotting, AU columns.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "facex/align.hpp"
#include "facex/au.hpp"
#include "facex/clip_buffer.hpp"
#include "facex/faces.hpp"
#include "facex/json.hpp"
#include "facex/metadata.hpp"
#include "facex/npy.hpp"
#include "facex/spotting.hpp"

namespace fs = std::filesystem;
using facex::Json;

namespace {

int failures = 0, checks = 0;

void check(bool ok, const std::string& what) {
    ++checks;
    if (!ok) {
        ++failures;
        std::printf("FAILED: %s\n", what.c_str());
    }
}

cv::Mat read_image(const fs::path& path) {  // a uint8 image written by numpy.save, as its own copy
    return facex::image_view(facex::read_npy(path.string())).clone();
}

double worst(const cv::Mat& a, const cv::Mat& b) {
    cv::Mat x, y;
    a.convertTo(x, CV_64F);
    b.convertTo(y, CV_64F);
    return cv::norm(x.reshape(1, 1), y.reshape(1, 1), cv::NORM_INF);
}

std::string intervals_text(const std::vector<facex::Interval>& intervals) {
    std::ostringstream s;
    for (const auto& i : intervals) s << i.type << " " << i.onset << "-" << i.apex << "-" << i.offset << " " << i.score << "; ";
    return s.str();
}

bool same_intervals(const std::vector<facex::Interval>& found, const Json& expected) {
    if (found.size() != expected.size()) return false;
    for (std::size_t i = 0; i < found.size(); ++i) {
        const Json& e = expected[i];
        if (found[i].type != e["type"].string() || found[i].onset != e["onset"].number() ||
            found[i].apex != e["apex"].number() || found[i].offset != e["offset"].number() ||
            std::abs(found[i].score - e["score"].number()) > 1e-6)
            return false;
    }
    return true;
}

// ---------------------------------------------------------------- self-contained

void self_contained() {
    Json value = Json::parse(R"({"a": [1, 2.5, -3e2], "b": {"c": "x\u00e9\n"}, "d": null, "e": true})");
    check(value["a"].numbers() == std::vector<double>({1, 2.5, -300}), "JSON numbers");
    check(value["b"]["c"].string() == "x\xc3\xa9\n", "JSON string escapes");
    check(value["d"].is_null() && value["e"].boolean(), "JSON null and true");
    bool refused = false;
    try {
        Json::parse("{\"a\": }");
    } catch (const facex::JsonError&) {
        refused = true;
    }
    check(refused, "JSON refuses bad input");

    cv::Mat points = facex::template_points(112, 0.0);
    cv::Mat identity = facex::similarity_matrix(points, points);
    check(worst(identity, (cv::Mat_<double>(2, 3) << 1, 0, 0, 0, 1, 0)) < 1e-9, "similarity of a point set to itself");

    facex::ClipBuffer buffer(16, 0.5, 30.0, 8);
    int clips = 0;
    for (int n = 0; n < 40; ++n)
        if (buffer.push(cv::Mat(1, 1, CV_8UC3), n)) ++clips;
    check(clips == 4 && buffer.capacity() == 16, "clip buffer at 30 fps: clips at frames 15, 23, 31 and 39");
}

// ---------------------------------------------------------------- cases from Python

void clip_buffer_cases(const fs::path& folder) {
    Json cases = Json::parse_file((folder / "clip_buffer.json").string());
    for (const Json& c : cases.array()) {
        facex::ClipBuffer buffer(static_cast<int>(c["length"].number()), c["span"].number(), c["fps"].number(),
                                 static_cast<int>(c["stride"].number()));
        std::vector<std::vector<double>> emitted;
        for (double n : c["pushed"].numbers()) {
            if (buffer.push(cv::Mat(1, 1, CV_8UC1), static_cast<std::int64_t>(n))) {
                auto numbers = buffer.sample_numbers();
                emitted.emplace_back(numbers.begin(), numbers.end());
            }
        }
        if (buffer.flush()) {
            auto numbers = buffer.sample_numbers();
            emitted.emplace_back(numbers.begin(), numbers.end());
        }
        bool same = emitted.size() == c["clips"].size();
        for (std::size_t i = 0; same && i < emitted.size(); ++i) same = emitted[i] == c["clips"][i].numbers();
        check(same, "clip buffer at " + std::to_string(c["fps"].number()) + " fps, stride " +
                        std::to_string(static_cast<int>(c["stride"].number())) + ": the same clips as Python");
    }
}

void crop_cases(const fs::path& folder) {
    for (const auto& entry : fs::directory_iterator(folder / "crops")) {
        const fs::path& c = entry.path();
        Json settings = Json::parse_file((c / "settings.json").string());
        int size = static_cast<int>(settings["size"].number());
        cv::Mat frame = read_image(c / "frame.npy");
        cv::Mat matrix;
        if (fs::exists(c / "points.npy")) {
            matrix = facex::alignment_matrix(facex::matrix_of(facex::read_npy((c / "points.npy").string()), 5, 2), size,
                                             settings["margin"].number());
        } else {
            matrix = facex::resize_matrix(frame.rows, frame.cols, size);
        }
        cv::Mat expected_matrix = facex::matrix_of(facex::read_npy((c / "matrix.npy").string()), 2, 3);
        check(worst(matrix, expected_matrix) < 1e-6, c.filename().string() + ": alignment matrix");
        cv::Mat crop = facex::warp(frame, expected_matrix, size);
        double difference = worst(crop, read_image(c / "crop.npy"));
        check(difference <= settings["tolerance"].number(),
              c.filename().string() + ": crop within " + std::to_string(settings["tolerance"].number()) +
                  " grey levels (max difference " + std::to_string(difference) + ")");
    }
}

void region_cases(const fs::path& folder) {
    Json cases = Json::parse_file((folder / "regions.json").string());
    for (const Json& c : cases.array()) {
        auto boxes = facex::region_boxes(facex::FeatureSettings::from_json(c["settings"]));
        bool same = boxes.size() == c["boxes"].size();
        for (std::size_t i = 0; same && i < boxes.size(); ++i) {
            std::vector<double> b = c["boxes"][i].numbers();
            same = b == std::vector<double>{double(boxes[i].x0), double(boxes[i].y0), double(boxes[i].x1), double(boxes[i].y1)};
        }
        check(same, "region boxes at size " + std::to_string(c["settings"]["size"].number()));
    }
}

facex::SpotSettings spot_settings_of(const Json& s) {
    facex::SpotSettings out;
    for (const auto& [type, value] : s["thresholds"].object()) out.thresholds[type] = value.number();
    for (const auto& [type, value] : s["lengths"].object()) {
        std::optional<int> lo, hi;
        if (!value[0].is_null()) lo = static_cast<int>(value[0].number());
        if (!value[1].is_null()) hi = static_cast<int>(value[1].number());
        out.lengths[type] = {lo, hi};
    }
    out.boundary = s["boundary"].number();
    for (const auto& [type, value] : s["min_gap"].object()) out.min_gap[type] = static_cast<int>(value.number());
    return out;
}

void postprocess_cases(const fs::path& folder) {
    Json cases = Json::parse_file((folder / "postprocess.json").string());
    int i = 0;
    for (const Json& c : cases.array()) {
        std::vector<double> s = c["scores"].numbers();
        std::vector<float> scores(s.begin(), s.end());
        std::vector<std::int64_t> numbers;
        for (double n : c["numbers"].numbers()) numbers.push_back(static_cast<std::int64_t>(n));
        auto found = facex::spot(scores, numbers, spot_settings_of(c["settings"]), static_cast<int>(c["step"].number()));
        check(same_intervals(found, c["intervals"]), "post-processing case " + std::to_string(i++) + ": " + intervals_text(found));
    }
}

void streaming_cases(const fs::path& folder) {
    for (const auto& entry : fs::directory_iterator(folder / "streaming")) {
        const fs::path& c = entry.path();
        Json spec = Json::parse_file((c / "spec.json").string());
        facex::SpottingSettings settings;
        settings.features = facex::FeatureSettings::from_json(spec["feature_settings"]);
        for (const auto& [type, value] : spec["thresholds"].object()) settings.thresholds[type] = value.number();
        settings.boundary = spec["boundary"].number();
        settings.min_gap_seconds = spec["min_gap_seconds"].number();
        settings.receptive_radius = static_cast<int>(spec["receptive_radius"].number());
        facex::NpyArray faces = facex::read_npy((c / "faces.npy").string());
        std::vector<double> numbers = facex::read_npy((c / "numbers.npy").string()).values();
        std::vector<double> stored = facex::read_npy((c / "scores.npy").string()).values();
        std::vector<double> python_features = facex::read_npy((c / "features.npy").string()).values();
        facex::RecordedStream streamed = facex::stream_recorded(stored, settings, spec["fps"].number(), faces, numbers,
                                                                static_cast<int>(spec["chunk"].number()));
        double feature_error = 0;
        const auto& features = streamed.features;
        check(features.size() == python_features.size(), c.filename().string() + ": as many feature rows as Python");
        for (std::size_t i = 0; i < std::min(features.size(), python_features.size()); ++i)
            feature_error = std::max(feature_error, std::abs(features[i] - python_features[i]));
        char text[160];
        std::snprintf(text, sizeof text, ": features within %.3g of Python's (max difference %.3g)",
                      spec["feature_tolerance"].number(), feature_error);
        check(feature_error <= spec["feature_tolerance"].number(), c.filename().string() + text);
        Json offline = Json::parse_file((c / "offline.json").string());
        check(offline.size() > 0, c.filename().string() + ": the video has intervals to find");
        check(same_intervals(streamed.intervals, offline),
              c.filename().string() + ": streaming intervals equal offline spotting: " + intervals_text(streamed.intervals));
    }
}

void au_cases(const fs::path& folder) {
    Json c = Json::parse_file((folder / "au.json").string());
    std::vector<double> p = c["prob"].numbers(), q = c["intensity"].numbers();
    std::vector<float> prob(p.begin(), p.end()), intensity(q.begin(), q.end());
    auto columns = facex::openface_columns(prob.data(), intensity.data(), c["aus"].strings(), c["threshold"].number());
    bool same = columns.size() == c["columns"].size();
    for (std::size_t i = 0; same && i < columns.size(); ++i)
        same = columns[i].name == c["columns"][i][0].string() && std::abs(columns[i].value - c["columns"][i][1].number()) < 1e-6;
    check(same, "AU columns in OpenFace's order");
}

void face_cases(const fs::path& folder) {
    if (!fs::exists(folder / "faces")) return;  // Python had no dlib
    if (!facex::dlib_available()) {
        std::printf("facex_core built without dlib: the face-finding cases are not run\n");
        return;
    }
    Json model = Json::parse_file((folder / "faces" / "model.json").string());
    facex::FaceFinder finder("dlib", model["landmarks"].string());
    for (const auto& entry : fs::directory_iterator(folder / "faces")) {
        if (!entry.is_directory()) continue;
        const fs::path& c = entry.path();
        cv::Mat image = read_image(c / "image.npy");
        cv::Mat points = finder.points(image);
        cv::Mat expected = facex::matrix_of(facex::read_npy((c / "points.npy").string()), 5, 2);
        // dlib releases (Debian's 19.24, the wheel's 20.0) may place a landmark one pixel apart
        check(!points.empty() && worst(points, expected) <= 1.0,
              c.filename().string() + ": dlib's five points within a pixel of Python's" +
                  (points.empty() ? " (no face found)" : " (max difference " + std::to_string(worst(points, expected)) + ")"));
    }
}

void contract_cases(const fs::path& folder) {
    Json python = Json::parse_file((folder / "contracts.json").string());
    Json ours = Json::parse(facex::contracts_json());
    check(python["metadata_keys"].strings() == ours["metadata_keys"].strings(), "metadata keys equal Python's");
    for (const auto& [task, spec] : python["tasks"].object()) {
        bool same = ours["tasks"].has(task);
        for (const char* role : {"inputs", "outputs"}) {
            if (!same) break;
            const Json& a = spec[role];
            const Json& b = ours["tasks"][task][role];
            same = a.size() == b.size();
            for (std::size_t i = 0; same && i < a.size(); ++i) {
                same = a[i]["name"].string() == b[i]["name"].string() && a[i]["activation"].string() == b[i]["activation"].string()
                       && a[i]["shape"].size() == b[i]["shape"].size();
                for (std::size_t j = 0; same && j < a[i]["shape"].size(); ++j) {
                    const Json& x = a[i]["shape"][j];
                    const Json& y = b[i]["shape"][j];
                    same = x.is_number() ? y.is_number() && x.number() == y.number() : y.is_string() && x.string() == y.string();
                }
            }
        }
        check(same, task + " contract equals Python's");
    }
}

}  // namespace

int main() {
    self_contained();
    const char* cases = std::getenv("FACEX_CASES");
    if (cases && *cases) {
        fs::path folder(cases);
        clip_buffer_cases(folder);
        crop_cases(folder);
        region_cases(folder);
        postprocess_cases(folder);
        streaming_cases(folder);
        au_cases(folder);
        face_cases(folder);
        contract_cases(folder);
    } else {
        std::printf("FACEX_CASES not set: only the self-contained checks ran\n");
    }
    std::printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
