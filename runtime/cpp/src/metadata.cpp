#include "facex/metadata.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace facex {
namespace {

std::string dim_text(const Dim& d) {
    return std::holds_alternative<long long>(d) ? std::to_string(std::get<long long>(d)) : std::get<std::string>(d);
}

std::string shape_text(const std::vector<Dim>& shape, bool quoted = true) {
    std::ostringstream s;
    s << "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        s << (i ? ", " : "");
        if (std::holds_alternative<long long>(shape[i])) s << std::get<long long>(shape[i]);
        else s << (quoted ? "'" : "") << std::get<std::string>(shape[i]) << (quoted ? "'" : "");
    }
    s << "]";
    return s.str();
}

std::string names_text(const std::vector<std::string>& names) {
    std::ostringstream s;
    s << "[";
    for (std::size_t i = 0; i < names.size(); ++i) s << (i ? ", " : "") << "'" << names[i] << "'";
    s << "]";
    return s.str();
}

Json parsed(const ModelInfo& info, const std::string& key) {
    auto found = info.metadata.find(key);
    if (found == info.metadata.end()) throw ContractBroken(info.path + ": metadata lacks '" + key + "'");
    try {
        return Json::parse(found->second);
    } catch (const JsonError& error) {
        throw ContractBroken(info.path + ": metadata '" + key + "' is not JSON (" + error.what() + ")");
    }
}

std::string value_of(const ModelInfo& info, const std::string& key, const std::string& otherwise = "") {
    auto found = info.metadata.find(key);
    return found == info.metadata.end() || found->second.empty() ? otherwise : found->second;
}

}  // namespace

const std::map<std::string, Contract>& contracts() {
    static const std::map<std::string, Contract> table = {
        {"emotion", {"emotion", {{"image", {"N", 3LL, 224LL, 224LL}, ""}}, {{"probs", {"N", "C"}, "softmax"}}, "NCHW"}},
        {"microexp",
         {"microexp", {{"clip", {"N", 16LL, 3LL, 224LL, 224LL}, ""}}, {{"probs", {"N", "C"}, "softmax"}}, "NTCHW"}},
        {"au",
         {"au", {{"image", {"N", 3LL, 256LL, 256LL}, ""}}, {{"au_prob", {"N", "K"}, ""}, {"au_intensity", {"N", "K"}, ""}},
          "NCHW"}},
        {"spotting", {"spotting", {{"features", {"N", "T", "D"}, ""}}, {{"scores", {"N", "T", 6LL}, "sigmoid"}}, "NTD"}},
    };
    return table;
}

const std::vector<std::string>& metadata_keys() {
    static const std::vector<std::string> keys = {
        "task", "classes", "input_name", "input_layout", "input_size", "input_range", "normalisation",
        "output_names", "output_activation", "fps", "clip_length", "face_detector", "landmark_scheme",
        "align_template", "align_margin", "resize_interpolation", "training_config", "version", "contract_version"};
    return keys;
}

std::string contracts_json() {
    auto specs = [](const std::vector<TensorSpec>& list) {
        std::ostringstream s;
        s << "[";
        for (std::size_t i = 0; i < list.size(); ++i) {
            s << (i ? ", " : "") << "{\"name\": \"" << list[i].name << "\", \"shape\": [";
            for (std::size_t j = 0; j < list[i].shape.size(); ++j) {
                const Dim& d = list[i].shape[j];
                s << (j ? ", " : "");
                if (std::holds_alternative<long long>(d)) s << std::get<long long>(d);
                else s << "\"" << std::get<std::string>(d) << "\"";
            }
            s << "], \"activation\": \"" << list[i].activation << "\"}";
        }
        s << "]";
        return s.str();
    };
    std::ostringstream s;
    s << "{\"metadata_keys\": [";
    for (std::size_t i = 0; i < metadata_keys().size(); ++i) s << (i ? ", " : "") << "\"" << metadata_keys()[i] << "\"";
    s << "], \"tasks\": {";
    bool first = true;
    for (const auto& [task, c] : contracts()) {
        s << (first ? "" : ", ") << "\"" << task << "\": {\"inputs\": " << specs(c.inputs)
          << ", \"outputs\": " << specs(c.outputs) << ", \"layout\": \"" << c.layout << "\"}";
        first = false;
    }
    s << "}}";
    return s.str();
}

ModelInfo check_contract(const ModelDescription& model) {
    const std::string& path = model.path;
    auto task_entry = model.metadata.find("task");
    if (task_entry == model.metadata.end())
        throw ContractBroken(path + ": no `task` in the model metadata: not exported by common.export");
    const std::string task = task_entry->second;
    auto contract = contracts().find(task);
    if (contract == contracts().end())
        throw ContractBroken("metadata names task '" + task + "'; the application serves ['au', 'emotion', 'microexp', "
                             "'spotting']");
    std::vector<std::string> missing;
    for (const std::string& key : metadata_keys())
        if (!model.metadata.count(key)) missing.push_back(key);
    if (!missing.empty()) throw ContractBroken(path + ": metadata lacks " + names_text(missing));
    auto check_role = [&](const char* role, const std::vector<TensorInfo>& found, const std::vector<TensorSpec>& specs) {
        std::vector<std::string> have, want;
        for (const TensorInfo& t : found) have.push_back(t.name);
        for (const TensorSpec& s : specs) want.push_back(s.name);
        if (have != want)
            throw ContractBroken(path + ": " + task + " " + role + " are " + names_text(have) + "; the contract says " +
                                 names_text(want));
        for (std::size_t i = 0; i < found.size(); ++i) {
            const TensorInfo& tensor = found[i];
            const TensorSpec& spec = specs[i];
            if (!tensor.float32)
                throw ContractBroken(path + ": " + tensor.name + " is " + tensor.element_type + ", the contract says float32");
            if (tensor.shape.size() != spec.shape.size())
                throw ContractBroken(path + ": " + tensor.name + " has rank " + std::to_string(tensor.shape.size()) +
                                     ", the contract says " + std::to_string(spec.shape.size()) + " " + shape_text(spec.shape));
            for (std::size_t axis = 0; axis < spec.shape.size(); ++axis) {
                const Dim& want_dim = spec.shape[axis];
                const Dim& dim = tensor.shape[axis];
                if (std::holds_alternative<long long>(want_dim) && dim != want_dim)
                    throw ContractBroken(path + ": " + tensor.name + " axis " + std::to_string(axis) + " is " +
                                         dim_text(dim) + ", the contract says " + dim_text(want_dim) + " (shape " +
                                         shape_text(spec.shape) + ")");
                bool dynamic = std::holds_alternative<std::string>(want_dim) &&
                               (std::get<std::string>(want_dim) == "N" || std::get<std::string>(want_dim) == "T");
                if (dynamic && std::holds_alternative<long long>(dim))
                    throw ContractBroken(path + ": " + tensor.name + " axis " + std::to_string(axis) + " (" +
                                         dim_text(want_dim) + ") is fixed at " + dim_text(dim) + "; it must be dynamic");
            }
        }
    };
    check_role("inputs", model.inputs, contract->second.inputs);
    check_role("outputs", model.outputs, contract->second.outputs);
    ModelInfo info{path, task, model.metadata, model.inputs, model.outputs, {}};
    const std::string key = task == "au" ? "aus" : task == "spotting" ? "score_names" : "classes";
    Json labels;
    try {
        labels = Json::parse(value_of(info, key));
    } catch (const JsonError&) {
        throw ContractBroken(path + ": metadata '" + key + "' is not a JSON list: '" + value_of(info, key) + "'");
    }
    bool names = labels.is_array() && labels.size() > 0;
    for (std::size_t i = 0; names && i < labels.size(); ++i) names = labels[i].is_string();
    if (!names) throw ContractBroken(path + ": metadata '" + key + "' must list names, got " + value_of(info, key));
    info.labels = labels.strings();
    const Dim& width = model.outputs[0].shape.back();
    if (std::holds_alternative<long long>(width) && std::get<long long>(width) != static_cast<long long>(info.labels.size()))
        throw ContractBroken(path + ": " + model.outputs[0].name + " has " + dim_text(width) + " values per row but " +
                             key + " names " + std::to_string(info.labels.size()));
    return info;
}

void check_values(const ModelInfo& info, const std::map<std::string, std::vector<float>>& outputs,
                  const std::map<std::string, std::vector<long long>>& shapes) {
    for (const auto& [name, values] : outputs)
        for (float v : values)
            if (!std::isfinite(v)) throw ContractBroken(info.path + ": " + name + " gives NaN or infinite values on the probe input");
    auto range = [&](const std::string& name, float lo, float hi, const std::string& what) {
        for (float v : outputs.at(name))
            if (v < lo || v > hi) throw ContractBroken(info.path + ": " + what);
    };
    if (info.task == "emotion" || info.task == "microexp") {
        const std::vector<float>& probs = outputs.at("probs");
        long long width = shapes.at("probs").back();
        for (std::size_t row = 0; row * width < probs.size(); ++row) {
            double sum = 0;
            for (long long j = 0; j < width; ++j) {
                float p = probs[row * width + j];
                if (p < 0 || p > 1) throw ContractBroken(info.path + ": probs must be probabilities summing to 1 per row");
                sum += p;
            }
            if (std::abs(sum - 1.0) > 1e-3)
                throw ContractBroken(info.path + ": probs must be probabilities summing to 1 per row (a row sums to " +
                                     std::to_string(sum) + ")");
        }
    } else if (info.task == "au") {
        range("au_prob", 0.0f, 1.0f, "au_prob outside [0, 1]");
        range("au_intensity", -1e-4f, 5.0f + 1e-4f, "au_intensity outside [0, 5]");
    } else if (info.task == "spotting") {
        range("scores", 0.0f, 1.0f, "scores outside [0, 1]");
    }
}

FaceSettings face_settings(const ModelInfo& info) {
    FaceSettings s;
    if (info.task == "spotting") {
        FeatureSettings features = FeatureSettings::from_json(parsed(info, "feature_settings"));
        s.size = features.size;
        s.margin = features.margin;
        s.face_detector = features.detector;
        return s;
    }
    Json size = parsed(info, "input_size");
    s.size = static_cast<int>(size.is_array() ? size[size.size() - 1].number() : size.number());
    s.margin = std::stod(value_of(info, "align_margin", "0"));
    // informational (the crop is the template for `size` and `margin`); absent where a model was exported without
    // a data module's preprocessing record
    if (!value_of(info, "align_template").empty()) {
        Json points = parsed(info, "align_template");
        if (points.is_array())
            for (const Json& p : points.array()) s.align_template.push_back(p.numbers());
    }
    s.face_detector = value_of(info, "face_detector");
    return s;
}

std::vector<std::string> class_names(const ModelInfo& info) { return parsed(info, "classes").strings(); }

std::vector<std::string> au_names(const ModelInfo& info) {
    return info.metadata.count("aus") && !info.metadata.at("aus").empty() ? parsed(info, "aus").strings()
                                                                           : class_names(info);
}

double au_threshold(const ModelInfo& info) { return std::stod(value_of(info, "threshold", "0.5")); }

ClipSettings clip_settings(const ModelInfo& info) {
    ClipSettings s;
    s.length = std::stoi(value_of(info, "clip_length", "16"));
    s.sampling = info.metadata.count("clip_sampling") ? info.metadata.at("clip_sampling") : "uniform";
    // the training clips' rate: one fps, or the median of the training datasets' rates
    std::vector<double> rates;
    std::string fps = value_of(info, "fps");
    if (!fps.empty()) {
        Json value = Json::parse(fps);
        if (value.is_object()) {
            for (const auto& [name, rate] : value.object())
                if (rate.number()) rates.push_back(rate.number());
        } else if (value.number()) {
            rates.push_back(value.number());
        }
    }
    if (!rates.empty()) {
        std::sort(rates.begin(), rates.end());
        std::size_t n = rates.size();
        s.fps = n % 2 ? rates[n / 2] : 0.5 * (rates[n / 2 - 1] + rates[n / 2]);
    }
    // a uniform onset..offset model saw whole expressions (up to 0.5 s); an apex one saw `length` frames at fps
    s.span = s.sampling.find("uniform") != std::string::npos ? 0.5 : (s.length - 1) / s.fps;
    return s;
}

SpottingSettings spotting_settings(const ModelInfo& info) {
    SpottingSettings s;
    s.features = FeatureSettings::from_json(parsed(info, "feature_settings"));
    const Json thresholds = parsed(info, "thresholds");
    for (const auto& [type, value] : thresholds.object()) s.thresholds[type] = value.number();
    s.boundary = std::stod(value_of(info, "boundary", "0.5"));
    s.min_gap_seconds = std::stod(value_of(info, "min_gap_seconds", "0.3"));
    s.receptive_radius = std::stoi(value_of(info, "receptive_radius", "0"));
    return s;
}

}  // namespace facex
