// A model handle on ONNX Runtime that follows its file (runtime.model.Model in C++).
//
// Loading: the file's bytes are read once, a session is built, the contract is checked (names, shapes, metadata,
// labels) and a probe input is run (values in range). Hot reload: a watcher thread polls the file (size,
// modification time, inode); when it changes it waits until the file has stayed unchanged for `settle` seconds,
// then loads and checks the new file on that thread, and swaps a std::shared_ptr atomically: a predict() call
// copies the pointer once at its start, so no call fails and none waits for a load. A partial, corrupt,
// contract-breaking file, or a model of another task, is refused: the old model keeps serving and the refusal is
// kept in status(); the same bytes are not tried again until the file changes once more.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "facex/metadata.hpp"

namespace facex {

struct Tensor {
    std::vector<float> values;
    std::vector<std::int64_t> shape;
};
using Outputs = std::map<std::string, Tensor>;

struct Refusal {
    std::string path, error;
    double time;  // seconds since the epoch
};

struct ModelStatus {
    std::string path, task, provider;
    double serving_since = 0;
    int reloads = 0;
    std::vector<Refusal> refused;
    std::string last_error;
};

struct ModelOptions {
    bool watch = false;
    std::vector<std::string> providers;  // in order of preference; empty: CUDA where available, else CPU
    int threads = 0;                     // intra-op threads; 0: ONNX Runtime's choice
    double poll = 0.1, settle = 0.2;     // seconds
    std::string task;                    // refuse another task (default: the first file's)
    bool keep_labels = false;            // refuse a file whose labels differ (consumers with fixed columns)
};

std::vector<std::string> available_providers();

class Model {
  public:
    explicit Model(const std::string& path, ModelOptions options = {});  // throws UnreadableModel / ContractBroken
    ~Model();
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    // The single input (float32, row-major, `shape`) -> every output by name.
    Outputs predict(const std::vector<float>& input, const std::vector<std::int64_t>& shape) const;
    std::shared_ptr<const ModelInfo> info() const;  // of the model serving now
    const std::string& task() const { return task_; }
    ModelStatus status() const;

    bool reload();                      // load the file now; false: refused (see status)
    bool swap(const std::string& path);  // serve another file from now on (and watch that one)
    void close();                       // stop watching

  private:
    struct Loaded;
    struct Signature {
        long long size = -1, mtime_ns = 0, inode = 0;
        bool operator==(const Signature& o) const { return size == o.size && mtime_ns == o.mtime_ns && inode == o.inode; }
        bool operator!=(const Signature& o) const { return !(*this == o); }
    };

    static Signature signature_of(const std::string& path);
    std::shared_ptr<const Loaded> load(const std::string& path) const;
    bool attempt(const std::string& path);
    void watch();
    bool settled(const Signature& first);

    std::string path_, task_;
    ModelOptions options_;
    std::vector<std::string> labels_;
    std::shared_ptr<const Loaded> current_;  // read and replaced with std::atomic_load / std::atomic_store
    mutable std::mutex mutex_;               // guards refused_, rejected_, reloads_, path_ changes
    std::vector<Refusal> refused_;
    Signature rejected_;
    int reloads_ = 0;
    std::atomic<bool> stop_{false};
    std::thread watcher_;
};

}  // namespace facex
