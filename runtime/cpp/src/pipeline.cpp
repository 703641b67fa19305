#include "facex/pipeline.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <opencv2/imgproc.hpp>

#include "facex/au.hpp"

namespace facex {
namespace {

std::vector<float> input_of(const std::vector<cv::Mat>& faces) {
    std::vector<float> values;
    for (const cv::Mat& f : faces) append_input(f, values);
    return values;
}

std::size_t argmax(const std::vector<float>& values) {
    return static_cast<std::size_t>(std::max_element(values.begin(), values.end()) - values.begin());
}

Cell text(const std::string& value) { return {Cell::Kind::Text, value, 0}; }
Cell number(double value) { return {Cell::Kind::Number, "", value}; }
Cell integer(double value) { return {Cell::Kind::Integer, "", value}; }

std::string format(const char* pattern, double value) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, pattern, value);
    return buffer;
}

}  // namespace

Models find_models(const std::string& folder, const ModelOptions& options, bool strict,
                   std::vector<std::pair<std::string, std::string>>* refused) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(folder)) throw std::invalid_argument(folder + ": models folder not found");
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(folder))
        if (entry.path().extension() == ".onnx") files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    Models models;
    std::vector<std::pair<std::string, std::string>> left_out;
    for (const fs::path& path : files) {
        std::shared_ptr<Model> model;
        try {
            model = std::make_shared<Model>(path.string(), options);
        } catch (const std::exception& error) {  // UnreadableModel, ContractBroken
            if (strict) throw std::invalid_argument(path.string() + ": cannot serve it: " + error.what());
            left_out.emplace_back(path.string(), error.what());
            continue;
        }
        if (models.count(model->task()))
            throw std::invalid_argument(folder + ": two " + model->task() + " models");
        models[model->task()] = model;
    }
    if (refused) refused->insert(refused->end(), left_out.begin(), left_out.end());
    if (models.empty() && !left_out.empty()) throw std::invalid_argument(folder + ": no model can be served");
    if (models.empty()) throw std::invalid_argument(folder + ": no .onnx models");
    return models;
}

SpotThenRecognise::SpotThenRecognise(std::shared_ptr<Model> model, std::size_t history)
    : model_(std::move(model)), history_(history), length_(clip_settings(*model_->info()).length) {}

void SpotThenRecognise::push(const cv::Mat& face, std::int64_t number) {
    if (order_.size() == history_) {
        faces_.erase(order_.front());
        order_.pop_front();
    }
    order_.push_back(number);
    faces_[number] = face.clone();
}

std::optional<Recognised> SpotThenRecognise::recognise(const Interval& interval) const {
    std::vector<std::int64_t> available;
    for (const auto& [n, face] : faces_)
        if (interval.onset <= n && n <= interval.offset) available.push_back(n);
    if (available.empty()) return std::nullopt;
    std::vector<cv::Mat> clip;
    const double last = static_cast<double>(available.size() - 1);
    for (int i = 0; i < length_; ++i) {  // numpy.rint(numpy.linspace(0, last, length)), as training samples
        double position = length_ == 1 ? last / 2 : (i == length_ - 1 ? last : i * (last / (length_ - 1)));
        clip.push_back(faces_.at(available[static_cast<std::size_t>(std::nearbyint(position))]));
    }
    const int side = clip[0].rows;
    Outputs out = model_->predict(input_of(clip), {1, length_, 3, side, side});
    const std::vector<float>& probs = out.at("probs").values;
    std::vector<std::string> classes = class_names(*model_->info());
    return Recognised{interval.onset, interval.apex, interval.offset, classes.at(argmax(probs)), probs};
}

Pipeline::Pipeline(Models models, double fps, FaceFinder faces, int clip_stride, double steady_tolerance)
    : models_(std::move(models)), fps_(fps), faces_(std::move(faces)), steady_(steady_tolerance) {
    for (const auto& [task, model] : models_) {
        FaceSettings face = face_settings(*model->info());
        crops_[task] = {face.size, face.margin};
    }
    if (models_.count("microexp")) {
        ClipSettings clip = clip_settings(*models_.at("microexp")->info());
        clips_ = std::make_unique<ClipBuffer>(clip.length, clip.span, fps, clip_stride);
    }
    if (models_.count("spotting")) {
        std::shared_ptr<Model> spotting = models_.at("spotting");
        ScoreFunction scores = [spotting](const std::vector<float>& features, int frames, int dim) {
            return spotting->predict(features, {1, frames, dim}).at("scores").values;
        };
        spotter_ = std::make_unique<StreamingSpotter>(scores, spotting_settings(*spotting->info()), fps);
        if (models_.count("microexp"))
            recogniser_ = std::make_unique<SpotThenRecognise>(
                models_.at("microexp"), static_cast<std::size_t>(spotter_->margin() * spotter_->step() + 10 * static_cast<int>(fps)));
    }
}

std::vector<std::string> Pipeline::columns() const {
    std::vector<std::string> names = {"frame", "time", "face", "face_x", "face_y", "face_w", "face_h"};
    if (models_.count("emotion")) {
        names.push_back("emotion");
        for (const std::string& c : class_names(*models_.at("emotion")->info())) names.push_back("p_" + c);
    }
    if (models_.count("au")) {
        std::vector<std::string> aus = au_names(*models_.at("au")->info());
        for (const char* suffix : {"_r", "_c", "_p"})
            for (const std::string& a : aus) names.push_back(a + suffix);
    }
    if (models_.count("microexp")) {
        names.push_back("micro_class");
        for (const std::string& c : class_names(*models_.at("microexp")->info())) names.push_back("micro_p_" + c);
    }
    if (models_.count("spotting")) names.push_back("spotted");
    return names;
}

FrameResult Pipeline::frame(const cv::Mat& rgb, std::int64_t number, const cv::Mat& given) {
    FrameResult result;
    result.number = number;
    result.time = number / fps_;
    cv::Mat points = given.empty() ? faces_.points(rgb) : five_points(given);
    if (points.empty() && faces_.detects() && given.empty()) return result;  // no face: streams skip the frame
    result.face = true;
    if (!points.empty()) {
        double x0 = INFINITY, y0 = INFINITY, x1 = -INFINITY, y1 = -INFINITY;
        for (int i = 0; i < points.rows; ++i) {
            x0 = std::min(x0, points.at<double>(i, 0)), x1 = std::max(x1, points.at<double>(i, 0));
            y0 = std::min(y0, points.at<double>(i, 1)), y1 = std::max(y1, points.at<double>(i, 1));
        }
        double w = x1 - x0, h = y1 - y0;
        result.box = std::array<double, 4>{x0 - 0.6 * w, y0 - 0.9 * h, 2.2 * w, 2.4 * h};
    } else {
        result.box = std::array<double, 4>{0.0, 0.0, static_cast<double>(rgb.cols), static_cast<double>(rgb.rows)};
    }
    cv::Mat steady = steady_(points);
    std::map<std::string, cv::Mat> crops;
    for (const auto& [task, crop] : crops_) {
        bool clip_model = task == "microexp" || task == "spotting";
        crops[task] = faces_.crop(rgb, clip_model ? steady : points, crop.size, crop.margin);
    }
    for (const char* task : {"emotion", "au"}) {
        if (!models_.count(task)) continue;
        const int side = crops[task].rows;
        decode(task, models_.at(task)->predict(input_of({crops[task]}), {1, 3, side, side}), result);
    }
    if (clips_) {
        if (auto clip = clips_->push(crops["microexp"], number)) {
            const int side = (*clip)[0].rows;
            Outputs out = models_.at("microexp")->predict(input_of(*clip), {1, static_cast<std::int64_t>(clip->size()), 3, side, side});
            decode("microexp", out, result);
        }
    }
    if (recogniser_) recogniser_->push(crops["microexp"], number);
    if (spotter_) {
        cv::Mat grey;
        cv::cvtColor(crops["spotting"], grey, cv::COLOR_RGB2GRAY);
        result.intervals = spotter_->push(grey, number);
        recognise(result.intervals);
    }
    return result;
}

std::vector<Interval> Pipeline::finish() {
    if (!spotter_) return {};
    std::vector<Interval> tail = spotter_->flush();
    recognise(tail);
    return tail;
}

void Pipeline::recognise(const std::vector<Interval>& intervals) {
    if (!recogniser_) return;
    for (const Interval& interval : intervals)
        if (interval.type == "micro")
            if (auto found = recogniser_->recognise(interval)) recognised_.push_back(*found);
}

void Pipeline::decode(const std::string& task, const Outputs& out, FrameResult& result) const {
    const ModelInfo& info = *models_.at(task)->info();
    if (task == "emotion" || task == "microexp") {
        const std::vector<float>& probs = out.at("probs").values;
        std::vector<std::string> classes = class_names(info);
        const std::string prefix = task == "emotion" ? "p_" : "micro_p_";
        result.columns.emplace_back(task == "emotion" ? "emotion" : "micro_class", text(classes.at(argmax(probs))));
        for (std::size_t i = 0; i < classes.size(); ++i) result.columns.emplace_back(prefix + classes[i], number(probs[i]));
    } else if (task == "au") {
        for (const AuColumn& c : openface_columns(out.at("au_prob").values.data(), out.at("au_intensity").values.data(),
                                                  au_names(info), au_threshold(info))) {
            bool occurrence = c.name.size() > 2 && c.name.compare(c.name.size() - 2, 2, "_c") == 0;
            result.columns.emplace_back(c.name, occurrence ? integer(c.value) : number(c.value));
        }
    }
}

std::map<std::string, std::string> Pipeline::row(const FrameResult& result) const {
    std::map<std::string, std::string> row = {{"frame", std::to_string(result.number)},
                                              {"time", format("%.3f", result.time)},
                                              {"face", result.face ? "1" : "0"}};
    if (result.box) {
        const char* names[4] = {"face_x", "face_y", "face_w", "face_h"};
        for (int i = 0; i < 4; ++i) row[names[i]] = format("%.1f", (*result.box)[i]);
    }
    for (const auto& [name, cell] : result.columns) {
        if (cell.kind == Cell::Kind::Text) row[name] = cell.text;
        else if (cell.kind == Cell::Kind::Integer) row[name] = std::to_string(static_cast<long long>(cell.number));
        else row[name] = format("%.6f", cell.number);
    }
    if (!result.intervals.empty()) {
        std::string spotted;
        for (const Interval& i : result.intervals)
            spotted += (spotted.empty() ? "" : ";") + i.type + ":" + std::to_string(i.onset) + "-" + std::to_string(i.offset);
        row["spotted"] = spotted;
    }
    return row;
}

}  // namespace facex
