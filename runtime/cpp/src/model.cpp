#include "facex/model.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iterator>
#include <onnxruntime_cxx_api.h>
#include <opencv2/core.hpp>
#include <sstream>

namespace facex {
namespace {

Ort::Env& environment() {
    static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "facex");
    return env;
}

const OrtApi& api() { return Ort::GetApi(); }

void ok(OrtStatus* status) { Ort::ThrowOnError(status); }

double now() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string element_name(ONNXTensorElementDataType type) {
    switch (type) {
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
        default: return "element type " + std::to_string(static_cast<int>(type));
    }
}

// Names, element types and declared shapes through the C API, which every ONNX Runtime release keeps.
std::vector<TensorInfo> describe_tensors(OrtSession* session, bool inputs) {
    OrtAllocator* allocator = nullptr;
    ok(api().GetAllocatorWithDefaultOptions(&allocator));
    std::size_t count = 0;
    ok(inputs ? api().SessionGetInputCount(session, &count) : api().SessionGetOutputCount(session, &count));
    std::vector<TensorInfo> out;
    for (std::size_t i = 0; i < count; ++i) {
        char* name = nullptr;
        ok(inputs ? api().SessionGetInputName(session, i, allocator, &name)
                  : api().SessionGetOutputName(session, i, allocator, &name));
        TensorInfo info;
        info.name = name;
        allocator->Free(allocator, name);
        OrtTypeInfo* type = nullptr;
        ok(inputs ? api().SessionGetInputTypeInfo(session, i, &type) : api().SessionGetOutputTypeInfo(session, i, &type));
        const OrtTensorTypeAndShapeInfo* tensor = nullptr;
        ok(api().CastTypeInfoToTensorInfo(type, &tensor));
        if (tensor) {
            ONNXTensorElementDataType element;
            ok(api().GetTensorElementType(tensor, &element));
            info.element_type = element_name(element);
            info.float32 = element == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
            std::size_t rank = 0;
            ok(api().GetDimensionsCount(tensor, &rank));
            std::vector<int64_t> dims(rank);
            std::vector<const char*> symbols(rank, nullptr);
            ok(api().GetDimensions(tensor, dims.data(), rank));
            ok(api().GetSymbolicDimensions(tensor, symbols.data(), rank));
            for (std::size_t d = 0; d < rank; ++d) {
                if (dims[d] >= 0) info.shape.emplace_back(static_cast<long long>(dims[d]));
                else info.shape.emplace_back(std::string(symbols[d] && *symbols[d] ? symbols[d] : "?"));
            }
        } else {
            info.float32 = false;
            info.element_type = "not a tensor";
        }
        api().ReleaseTypeInfo(type);
        out.push_back(info);
    }
    return out;
}

std::map<std::string, std::string> metadata_of(OrtSession* session) {
    OrtAllocator* allocator = nullptr;
    ok(api().GetAllocatorWithDefaultOptions(&allocator));
    OrtModelMetadata* metadata = nullptr;
    ok(api().SessionGetModelMetadata(session, &metadata));
    char** keys = nullptr;
    int64_t count = 0;
    std::map<std::string, std::string> out;
    OrtStatus* status = api().ModelMetadataGetCustomMetadataMapKeys(metadata, allocator, &keys, &count);
    if (status == nullptr) {
        for (int64_t i = 0; i < count; ++i) {
            char* value = nullptr;
            if (api().ModelMetadataLookupCustomMetadataMap(metadata, allocator, keys[i], &value) == nullptr && value) {
                out[keys[i]] = value;
                allocator->Free(allocator, value);
            }
            allocator->Free(allocator, keys[i]);
        }
        if (keys) allocator->Free(allocator, keys);
    } else {
        api().ReleaseStatus(status);
    }
    api().ReleaseModelMetadata(metadata);
    return out;
}

std::string read_bytes(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw UnreadableModel(path + ": no such file or it cannot be read");
    return std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

Outputs run(Ort::Session& session, const std::vector<std::string>& input_names,
            const std::vector<std::string>& output_names, std::vector<float> input, const std::vector<std::int64_t>& shape) {
    Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value tensor = Ort::Value::CreateTensor<float>(memory, input.data(), input.size(), shape.data(), shape.size());
    std::vector<const char*> in{input_names[0].c_str()}, out;
    for (const std::string& n : output_names) out.push_back(n.c_str());
    std::vector<Ort::Value> values = session.Run(Ort::RunOptions{nullptr}, in.data(), &tensor, 1, out.data(), out.size());
    Outputs outputs;
    for (std::size_t i = 0; i < values.size(); ++i) {
        Tensor t;
        t.shape = values[i].GetTensorTypeAndShapeInfo().GetShape();
        std::size_t count = 1;
        for (std::int64_t d : t.shape) count *= static_cast<std::size_t>(d);
        const float* data = values[i].GetTensorMutableData<float>();
        t.values.assign(data, data + count);
        outputs[output_names[i]] = std::move(t);
    }
    return outputs;
}

// A deterministic input in the contract's range: images in [0, 1], spotting features near zero (runtime.check's
// probe_input in spirit: N = 2, T = 48).
std::pair<std::vector<float>, std::vector<std::int64_t>> probe_input(const ModelInfo& info) {
    std::vector<std::int64_t> shape;
    const TensorInfo& tensor = info.inputs.at(0);
    for (std::size_t axis = 0; axis < tensor.shape.size(); ++axis) {
        const Dim& d = tensor.shape[axis];
        if (std::holds_alternative<long long>(d)) {
            shape.push_back(std::get<long long>(d));
        } else if (std::get<std::string>(d) == "T") {
            shape.push_back(48);
        } else if (axis == 0 || std::get<std::string>(d) == "N") {
            shape.push_back(2);
        } else if (info.task == "spotting") {  // D: the extractor's width, named in input_size ["T", D]
            Json size = Json::parse(info.metadata.at("input_size"));
            shape.push_back(static_cast<std::int64_t>(size[size.size() - 1].number()));
        } else {
            throw ContractBroken(info.path + ": cannot size a probe for " + tensor.name);
        }
    }
    std::size_t count = 1;
    for (std::int64_t d : shape) count *= static_cast<std::size_t>(d);
    std::vector<float> values(count);
    cv::RNG rng(0);
    const float scale = info.task == "spotting" ? 0.01f : 1.0f;
    for (float& v : values) v = static_cast<float>(rng.uniform(0.0, 1.0)) * scale;
    return {values, shape};
}

}  // namespace

std::vector<std::string> available_providers() { return Ort::GetAvailableProviders(); }

struct Model::Loaded {
    std::unique_ptr<Ort::Session> session;
    ModelInfo info;
    Signature signature;
    double loaded_at = 0;
    std::vector<std::string> input_names, output_names;
    std::string provider;
};

Model::Signature Model::signature_of(const std::string& path) {
    struct stat s {};
    if (stat(path.c_str(), &s) != 0) return {};
    return {static_cast<long long>(s.st_size), static_cast<long long>(s.st_mtim.tv_sec) * 1000000000LL + s.st_mtim.tv_nsec,
            static_cast<long long>(s.st_ino)};
}

std::shared_ptr<const Model::Loaded> Model::load(const std::string& path) const {
    Signature before = signature_of(path);
    std::string bytes = read_bytes(path);  // read once: the file may be replaced again while the session is built
    auto loaded = std::make_shared<Loaded>();
    // the options runtime.model.session_options sets (docs/runtime.md, section 9)
    Ort::SessionOptions session_options;
    session_options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    session_options.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
    session_options.SetInterOpNumThreads(1);
    if (options_.threads > 0) session_options.SetIntraOpNumThreads(options_.threads);
    session_options.EnableCpuMemArena();
    session_options.EnableMemPattern();
    std::vector<std::string> wanted = options_.providers;
    if (wanted.empty()) wanted = {"CUDAExecutionProvider", "CPUExecutionProvider"};
    std::vector<std::string> available = available_providers();
    loaded->provider = "CPUExecutionProvider";
    for (const std::string& p : wanted) {
        if (std::find(available.begin(), available.end(), p) == available.end()) continue;
        if (p == "CUDAExecutionProvider") {
            try {
                OrtCUDAProviderOptions cuda{};
                cuda.cudnn_conv_algo_search = OrtCudnnConvAlgoSearchExhaustive;  // found once per fixed shape
                cuda.arena_extend_strategy = 1;                                 // kSameAsRequested
                cuda.do_copy_in_default_stream = 1;
                session_options.AppendExecutionProvider_CUDA(cuda);
                loaded->provider = p;
                break;
            } catch (const Ort::Exception&) {
                continue;  // a CUDA build without a usable GPU: the CPU serves
            }
        }
        if (p == "CPUExecutionProvider") break;
    }
    try {
        loaded->session = std::make_unique<Ort::Session>(environment(), bytes.data(), bytes.size(), session_options);
    } catch (const Ort::Exception& error) {
        std::string message = error.what();
        throw UnreadableModel(path + ": ONNX Runtime cannot load it (" + message.substr(0, message.find('\n')).substr(0, 200) + ")");
    }
    OrtSession* raw = *loaded->session;
    ModelDescription description{path, describe_tensors(raw, true), describe_tensors(raw, false), metadata_of(raw)};
    loaded->info = check_contract(description);
    for (const TensorInfo& t : loaded->info.inputs) loaded->input_names.push_back(t.name);
    for (const TensorInfo& t : loaded->info.outputs) loaded->output_names.push_back(t.name);
    auto [probe, shape] = probe_input(loaded->info);
    Outputs outputs;
    try {
        outputs = run(*loaded->session, loaded->input_names, loaded->output_names, probe, shape);
    } catch (const Ort::Exception& error) {
        std::string message = error.what();
        throw ContractBroken(path + ": the probe input fails (" + message.substr(0, message.find('\n')).substr(0, 200) + ")");
    }
    std::map<std::string, std::vector<float>> values;
    std::map<std::string, std::vector<long long>> shapes;
    for (const auto& [name, t] : outputs) {
        values[name] = t.values;
        shapes[name] = std::vector<long long>(t.shape.begin(), t.shape.end());
    }
    check_values(loaded->info, values, shapes);
    if (signature_of(path) != before) throw UnreadableModel(path + ": changed while it was being loaded");
    loaded->signature = before;
    loaded->loaded_at = now();
    return loaded;
}

Model::Model(const std::string& path, ModelOptions options) : path_(path), options_(std::move(options)) {
    current_ = load(path_);  // the first file must be good: there is nothing else to serve
    task_ = options_.task.empty() ? current_->info.task : options_.task;
    if (current_->info.task != task_)
        throw ContractBroken(path_ + ": a " + current_->info.task + " model where a " + task_ + " model was asked for");
    if (options_.keep_labels) labels_ = current_->info.labels;
    if (options_.watch) watcher_ = std::thread([this] { watch(); });
}

Model::~Model() { close(); }

void Model::close() {
    stop_ = true;
    if (watcher_.joinable()) watcher_.join();
}

std::shared_ptr<const ModelInfo> Model::info() const {
    std::shared_ptr<const Loaded> current = std::atomic_load(&current_);
    return std::shared_ptr<const ModelInfo>(current, &current->info);
}

Outputs Model::predict(const std::vector<float>& input, const std::vector<std::int64_t>& shape) const {
    std::shared_ptr<const Loaded> current = std::atomic_load(&current_);  // one read: a swap does not affect this call
    return run(*current->session, current->input_names, current->output_names, input, shape);
}

ModelStatus Model::status() const {
    std::shared_ptr<const Loaded> current = std::atomic_load(&current_);
    std::lock_guard<std::mutex> lock(mutex_);
    ModelStatus s;
    s.path = path_;
    s.task = task_;
    s.provider = current->provider;
    s.serving_since = current->loaded_at;
    s.reloads = reloads_;
    s.refused = refused_;
    s.last_error = refused_.empty() ? "" : refused_.back().error;
    return s;
}

bool Model::attempt(const std::string& path) {
    Signature signature = signature_of(path);
    try {
        std::shared_ptr<const Loaded> loaded = load(path);
        if (loaded->info.task != task_)
            throw ContractBroken(path + ": a " + loaded->info.task + " model cannot replace the " + task_ + " model");
        if (options_.keep_labels && loaded->info.labels != labels_)
            throw ContractBroken(path + ": its labels differ from the model's, which the consumer's outputs are fixed to");
        std::atomic_store(&current_, loaded);
    } catch (const std::exception& error) {  // UnreadableModel, ContractBroken, a file that vanished mid-read
        std::lock_guard<std::mutex> lock(mutex_);
        refused_.push_back({path, error.what(), now()});
        rejected_ = signature;
        return false;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    ++reloads_;
    rejected_ = Signature{};
    return true;
}

bool Model::reload() {
    std::string path;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        path = path_;
    }
    return attempt(path);
}

bool Model::swap(const std::string& path) {
    if (!attempt(path)) return false;
    std::lock_guard<std::mutex> lock(mutex_);
    path_ = path;
    return true;
}

bool Model::settled(const Signature& first) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(options_.settle);
    std::string path;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        path = path_;
    }
    while (std::chrono::steady_clock::now() < deadline) {
        if (stop_) return false;
        std::this_thread::sleep_for(std::chrono::duration<double>(std::min(options_.poll, options_.settle)));
        if (signature_of(path) != first) return false;
    }
    return true;
}

void Model::watch() {
    Signature seen = std::atomic_load(&current_)->signature;
    while (!stop_) {
        std::this_thread::sleep_for(std::chrono::duration<double>(options_.poll));
        std::string path;
        Signature rejected;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            path = path_;
            rejected = rejected_;
        }
        Signature current = signature_of(path);
        if (current.size < 0 || current == seen || current == rejected) continue;
        if (!settled(current)) continue;
        seen = signature_of(path);
        if (seen.size >= 0 && seen != std::atomic_load(&current_)->signature) {
            attempt(path);
            std::lock_guard<std::mutex> lock(mutex_);
            seen = rejected_.size >= 0 ? rejected_ : std::atomic_load(&current_)->signature;
        }
    }
}

}  // namespace facex
