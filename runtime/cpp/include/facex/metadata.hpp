// A model's description (tensor names, shapes, element types, the metadata strings of its ONNX file) checked
// against its task's contract, as common.contract.check_file checks it, and its metadata parsed into typed
// settings. The contract tables below are the Python ones (<task>/contract.py); the conformance program prints
// them so that a test can compare the two.
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "facex/json.hpp"
#include "facex/spotting.hpp"

namespace facex {

class ContractBroken : public std::runtime_error {  // the file is a model, but not one the contract allows
  public:
    using std::runtime_error::runtime_error;
};

class UnreadableModel : public std::runtime_error {  // missing, partial, not ONNX
  public:
    using std::runtime_error::runtime_error;
};

// A dimension: a fixed size, or a symbol ("N" batch, "T" time, "C"/"K"/"D" fixed per model).
using Dim = std::variant<long long, std::string>;

struct TensorSpec {
    std::string name;
    std::vector<Dim> shape;
    std::string activation;  // "softmax", "sigmoid" or ""
};

struct Contract {
    std::string task;
    std::vector<TensorSpec> inputs, outputs;
    std::string layout;
};

const std::map<std::string, Contract>& contracts();
const std::vector<std::string>& metadata_keys();
std::string contracts_json();  // the tables as JSON, for comparison with the Python ones

struct TensorInfo {
    std::string name;
    std::vector<Dim> shape;  // as the file declares it: sizes, or symbol names for dynamic axes
    bool float32 = true;
    std::string element_type = "float32";
};

struct ModelDescription {
    std::string path;
    std::vector<TensorInfo> inputs, outputs;
    std::map<std::string, std::string> metadata;
};

struct ModelInfo {
    std::string path, task;
    std::map<std::string, std::string> metadata;
    std::vector<TensorInfo> inputs, outputs;
    std::vector<std::string> labels;  // class names, AU names or score names
};

// Structure, metadata keys and labels; throws ContractBroken with the message runtime.check gives.
ModelInfo check_contract(const ModelDescription& model);
// Values of the outputs on a probe input (name -> values): probabilities summing to 1, scores in [0, 1], AU
// intensities in [0, 5], nothing infinite or NaN.
void check_values(const ModelInfo& info, const std::map<std::string, std::vector<float>>& outputs,
                  const std::map<std::string, std::vector<long long>>& shapes);

// ---------------------------------------------------------------- typed settings from the metadata

struct FaceSettings {  // how to crop a face for an image or clip model
    int size = 224;
    double margin = 0.0;
    std::vector<std::vector<double>> align_template;
    std::string face_detector;
};

struct ClipSettings {
    int length = 16;
    double span = 0.5;  // seconds a streamed clip covers
    double fps = 30.0;  // the rate the training clips were sampled at
    std::string sampling;
};

FaceSettings face_settings(const ModelInfo& info);
std::vector<std::string> class_names(const ModelInfo& info);
std::vector<std::string> au_names(const ModelInfo& info);
double au_threshold(const ModelInfo& info);
ClipSettings clip_settings(const ModelInfo& info);
SpottingSettings spotting_settings(const ModelInfo& info);

}  // namespace facex
