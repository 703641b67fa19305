// facex_conform VECTORS_DIR [--models DIR]: replays the golden vectors of `python -m runtime.vectors` stage by
// stage, each stage fed from the previous stage's stored value, and prints one line per stage with its largest
// difference and the tolerance from index.json. Built with the ONNX Runtime layer (and given --models), it also
// runs each model on its stored input. `facex_conform --contracts` prints the contract tables as JSON.
// Exit status: 0 every stage within its tolerance, 1 a stage outside it, 2 the vectors cannot be read.
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <map>
#include <opencv2/imgproc.hpp>
#include <string>
#include <vector>

#include "facex/align.hpp"
#include "facex/au.hpp"
#include "facex/clip_buffer.hpp"
#include "facex/json.hpp"
#include "facex/metadata.hpp"
#include "facex/npy.hpp"
#include "facex/spotting.hpp"
#ifdef FACEX_WITH_ORT
#include "facex/model.hpp"
#endif

namespace {

using facex::Json;
using facex::NpyArray;

double max_difference(const std::vector<double>& a, const std::vector<double>& b) {
    if (a.size() != b.size()) return INFINITY;
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
    return worst;
}

std::vector<double> values_of(const cv::Mat& m) {
    cv::Mat d;
    m.convertTo(d, CV_64F);
    d = d.reshape(1, 1);
    return std::vector<double>(d.begin<double>(), d.end<double>());
}

template <class T>
std::vector<double> as_double(const std::vector<T>& v) { return std::vector<double>(v.begin(), v.end()); }

class Replay {
  public:
    explicit Replay(std::string folder) : folder_(std::move(folder)) {
        index_ = Json::parse_file(folder_ + "/index.json");
        for (const Json& e : index_["entries"].array()) entries_[e["task"].string() + "/" + e["stage"].string()] = e;
    }

    bool has(const std::string& task, const std::string& stage) const { return entries_.count(task + "/" + stage) > 0; }
    NpyArray npy(const std::string& task, const std::string& stage) const {
        return facex::read_npy(folder_ + "/" + entries_.at(task + "/" + stage)["file"].string());
    }
    Json json(const std::string& task, const std::string& stage) const {
        return Json::parse_file(folder_ + "/" + entries_.at(task + "/" + stage)["file"].string());
    }
    // the stage's tolerance; a wider one where the vectors came from another OpenCV release and the stage says so
    double tolerance(const std::string& task, const std::string& stage) const {
        const Json& e = entries_.at(task + "/" + stage);
        bool same_opencv = !index_.has("opencv") || index_["opencv"].string() == CV_VERSION;
        if (!same_opencv && e.has("tolerance_other_opencv")) return e["tolerance_other_opencv"].number();
        return e.has("tolerance") ? e["tolerance"].number() : 0.0;
    }
    const Json& index() const { return index_; }

    // one line per stage; false when outside the tolerance
    bool report(const std::string& task, const std::string& stage, double difference, double tolerance) {
        bool ok = difference <= tolerance;
        std::printf("%-9s %-15s max difference %-10.3g tolerance %-8.3g %s\n", task.c_str(), stage.c_str(), difference,
                    tolerance, ok ? "ok" : "FAILED");
        failed_ = failed_ || !ok;
        return ok;
    }
    bool failed() const { return failed_; }

  private:
    std::string folder_;
    Json index_;
    std::map<std::string, Json> entries_;
    bool failed_ = false;
};

facex::ModelInfo model_info(const Replay& r, const std::string& task) {
    Json model = r.json(task, "model");
    facex::ModelDescription description;
    description.path = model["path"].string();
    auto tensors = [](const Json& list) {
        std::vector<facex::TensorInfo> out;
        for (const Json& t : list.array()) {
            facex::TensorInfo info;
            info.name = t["name"].string();
            info.element_type = t["dtype"].string();
            info.float32 = info.element_type == "float32";
            for (const Json& d : t["shape"].array())
                info.shape.push_back(d.is_number() ? facex::Dim(static_cast<long long>(d.number())) : facex::Dim(d.string()));
            out.push_back(info);
        }
        return out;
    };
    description.inputs = tensors(model["inputs"]);
    description.outputs = tensors(model["outputs"]);
    for (const auto& [key, value] : model["metadata"].object()) description.metadata[key] = value.string();
    return facex::check_contract(description);
}

void replay_crop(Replay& r, const std::string& task, const facex::FaceSettings& face) {
    NpyArray stored_frame = r.npy(task, "frame");
    cv::Mat frame = facex::image_view(stored_frame);
    cv::Mat matrix;
    if (r.has(task, "points")) {
        cv::Mat points = facex::matrix_of(r.npy(task, "points"), 5, 2);
        cv::Mat computed = facex::alignment_matrix(points, face.size, face.margin);
        NpyArray stored = r.npy(task, "matrix");
        r.report(task, "matrix", max_difference(values_of(computed), stored.values()), r.tolerance(task, "matrix"));
        matrix = facex::matrix_of(stored, 2, 3);
    } else {
        matrix = facex::resize_matrix(frame.rows, frame.cols, face.size);
    }
    cv::Mat crop = facex::warp(frame, matrix, face.size);
    r.report(task, "crop", max_difference(values_of(crop), r.npy(task, "crop").values()), r.tolerance(task, "crop"));
}

void replay_input(Replay& r, const std::string& task) {
    std::vector<float> input;
    if (task == "microexp") {
        NpyArray crops = r.npy(task, "clip_crops");
        for (std::size_t i = 0; i < crops.shape[0]; ++i) facex::append_input(facex::frame_view(crops, i), input);
    } else {
        NpyArray crop = r.npy(task, "crop");
        facex::append_input(facex::image_view(crop), input);
    }
    r.report(task, "input", max_difference(as_double(input), r.npy(task, "input").values()), r.tolerance(task, "input"));
}

void replay_clip_numbers(Replay& r, const facex::ModelInfo& info) {
    Json settings;
    for (const Json& e : r.index()["entries"].array())
        if (e["task"].string() == "microexp" && e["stage"].string() == "clip_numbers") settings = Json::parse(e["note"].string());
    facex::ClipSettings clip = facex::clip_settings(info);
    facex::ClipBuffer buffer(clip.length, clip.span, r.index()["fps"].number(), static_cast<int>(settings["stride"].number()));
    std::vector<double> pushed = r.npy("microexp", "pushed_numbers").values();
    bool emitted = false;
    for (double n : pushed)
        if (buffer.push(cv::Mat(1, 1, CV_8UC3), static_cast<std::int64_t>(n))) emitted = true;
    if (!emitted) buffer.flush();
    double span_error = std::abs(clip.span - settings["span"].number()) + std::abs(clip.length - settings["length"].number());
    r.report("microexp", "clip settings", span_error, 1e-12);
    r.report("microexp", "clip_numbers", max_difference(as_double(buffer.sample_numbers()), r.npy("microexp", "clip_numbers").values()),
             r.tolerance("microexp", "clip_numbers"));
}

void replay_au_columns(Replay& r, const facex::ModelInfo& info) {
    std::vector<double> prob = r.npy("au", "au_prob").values(), intensity = r.npy("au", "au_intensity").values();
    std::vector<float> p(prob.begin(), prob.end()), q(intensity.begin(), intensity.end());
    std::vector<facex::AuColumn> columns = facex::openface_columns(p.data(), q.data(), facex::au_names(info),
                                                                   facex::au_threshold(info));
    Json stored = r.json("au", "columns");
    double worst = columns.size() == stored.size() ? 0.0 : INFINITY;
    for (const facex::AuColumn& c : columns)
        worst = std::max(worst, stored.has(c.name) ? std::abs(c.value - stored[c.name].number()) : INFINITY);
    r.report("au", "columns", worst, 1e-6);
}

double interval_difference(const std::vector<facex::Interval>& found, const Json& stored) {
    if (found.size() != stored.size()) return INFINITY;
    double worst = 0;
    for (std::size_t i = 0; i < found.size(); ++i) {
        const Json& s = stored[i];
        if (found[i].type != s["type"].string()) return INFINITY;
        worst = std::max({worst, std::abs(found[i].onset - s["onset"].number()), std::abs(found[i].apex - s["apex"].number()),
                          std::abs(found[i].offset - s["offset"].number()), std::abs(found[i].score - s["score"].number())});
    }
    return worst;
}

void replay_spotting(Replay& r, const facex::ModelInfo& info) {
    facex::SpottingSettings settings = facex::spotting_settings(info);
    NpyArray faces = r.npy("spotting", "faces");
    std::vector<double> numbers = r.npy("spotting", "numbers").values();
    std::vector<double> stored_scores = r.npy("spotting", "scores").values();
    facex::RecordedStream streamed =
        facex::stream_recorded(stored_scores, settings, r.index()["fps"].number(), faces, numbers);
    r.report("spotting", "features", max_difference(as_double(streamed.features), r.npy("spotting", "input").values()),
             r.tolerance("spotting", "input"));
    // offline on the stored scores, and streaming fed the same scores: both must give the stored intervals
    std::vector<std::int64_t> kept;
    for (std::size_t i = 0; i < numbers.size(); i += streamed.step) kept.push_back(static_cast<std::int64_t>(numbers[i]));
    std::vector<float> scores(stored_scores.begin(), stored_scores.end());
    double fps = r.index()["fps"].number() / streamed.step;
    auto offline = facex::spot(scores, kept, settings.spot_settings(fps, streamed.step), streamed.step);
    Json stored = r.json("spotting", "intervals");
    r.report("spotting", "intervals", interval_difference(offline, stored), 1e-6);
    r.report("spotting", "streaming", interval_difference(streamed.intervals, stored), 1e-6);
}

#ifdef FACEX_WITH_ORT
void replay_model(Replay& r, const std::string& task, const std::string& models) {
    facex::Model model(models + "/" + r.index()["models"][task].string());
    NpyArray input = r.npy(task, "input");
    std::vector<double> v = input.values();
    std::vector<float> values(v.begin(), v.end());
    std::vector<std::int64_t> shape(input.shape.begin(), input.shape.end());
    auto outputs = model.predict(values, shape);
    for (const auto& [name, output] : outputs) {
        if (!r.has(task, name)) continue;
        r.report(task, name + " (ORT)", max_difference(as_double(output.values), r.npy(task, name).values()),
                 r.tolerance(task, name));
    }
}
#endif

}  // namespace

int main(int argc, char** argv) {
    if (argc == 2 && std::string(argv[1]) == "--contracts") {
        std::cout << facex::contracts_json() << "\n";
        return 0;
    }
    if (argc < 2) {
        std::fprintf(stderr, "usage: facex_conform VECTORS_DIR [--models DIR] | --contracts\n");
        return 2;
    }
    std::string models;
    for (int i = 2; i + 1 < argc; ++i)
        if (std::string(argv[i]) == "--models") models = argv[i + 1];
    try {
        Replay r(argv[1]);
        for (const auto& [task, file] : r.index()["models"].object()) {
            facex::ModelInfo info = model_info(r, task);
            r.report(task, "contract", 0.0, 0.0);
            replay_crop(r, task, facex::face_settings(info));
            if (task != "spotting") replay_input(r, task);
            if (task == "microexp") replay_clip_numbers(r, info);
            if (task == "au") replay_au_columns(r, info);
            if (task == "spotting") replay_spotting(r, info);
#ifdef FACEX_WITH_ORT
            if (!models.empty()) replay_model(r, task, models);
#endif
        }
        return r.failed() ? 1 : 0;
    } catch (const std::exception& error) {
        std::fprintf(stderr, "facex_conform: %s\n", error.what());
        return 2;
    }
}
