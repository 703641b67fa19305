// Tests of the ONNX Runtime layer, on model files the pytest writes into FACEX_ORT_CASES: hot reload while a
// thread calls predict() without pause (atomic rename, a slow in-place write, a truncated file, a model of another
// task, then a valid file again): no call may fail, each good file must end up serving, each bad one refused
// while the previous model keeps serving.
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "facex/model.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
    std::printf("%s: %s\n", ok ? "ok" : "FAILED", what.c_str());
    if (!ok) ++failures;
}

std::string bytes_of(const fs::path& path) {
    std::ifstream file(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

void write(const fs::path& path, const std::string& bytes) {
    std::ofstream file(path, std::ios::binary | std::ios::trunc);
    file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

template <class Predicate>
bool wait_for(Predicate predicate, std::chrono::milliseconds limit = 15000ms) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
        if (predicate()) return true;
        std::this_thread::sleep_for(10ms);
    }
    return false;
}

}  // namespace

int main() {
    const char* folder = std::getenv("FACEX_ORT_CASES");
    if (!folder || !*folder) {
        std::printf("FACEX_ORT_CASES not set: nothing to test\n");
        return 0;
    }
    const fs::path cases(folder), work = cases / "work";
    fs::create_directories(work);
    const std::string a = bytes_of(cases / "emotion_a.onnx"), b = bytes_of(cases / "emotion_b.onnx");
    const std::string other_task = bytes_of(cases / "au.onnx");
    const fs::path target = work / "emotion.onnx";
    write(target, a);

    std::vector<float> image(3 * 224 * 224);
    for (std::size_t i = 0; i < image.size(); ++i) image[i] = static_cast<float>((i * 7919) % 255) / 255.0f;
    const std::vector<std::int64_t> shape = {1, 3, 224, 224};
    facex::ModelOptions direct;
    direct.providers = {"CPUExecutionProvider"};
    const std::vector<float> from_a = facex::Model((cases / "emotion_a.onnx").string(), direct).predict(image, shape).at("probs").values;
    const std::vector<float> from_b = facex::Model((cases / "emotion_b.onnx").string(), direct).predict(image, shape).at("probs").values;
    auto same = [](const std::vector<float>& x, const std::vector<float>& y) {
        if (x.size() != y.size()) return false;
        for (std::size_t i = 0; i < x.size(); ++i)
            if (std::abs(x[i] - y[i]) > 1e-6) return false;
        return true;
    };
    check(!same(from_a, from_b), "the two emotion files are different models");

    facex::ModelOptions options;
    options.watch = true;
    options.providers = {"CPUExecutionProvider"};
    options.poll = 0.02;
    options.settle = 0.15;
    facex::Model model(target.string(), options);
    std::atomic<bool> stop{false};
    std::atomic<long> calls{0}, failed{0};
    std::atomic<int> serving{0};  // 1: a's outputs, 2: b's
    std::thread caller([&] {
        while (!stop) {
            try {
                std::vector<float> probs = model.predict(image, shape).at("probs").values;
                serving = same(probs, from_a) ? 1 : same(probs, from_b) ? 2 : 3;
                ++calls;
            } catch (const std::exception& error) {
                ++failed;
                std::printf("a call failed: %s\n", error.what());
            }
        }
    });
    auto refusals = [&] { return model.status().refused.size(); };

    check(wait_for([&] { return serving == 1; }), "serving the first file");
    // 1. atomic rename
    write(work / "incoming.tmp", b);
    fs::rename(work / "incoming.tmp", target);
    check(wait_for([&] { return serving == 2; }), "an atomic rename is picked up");
    // 2. a slow in-place write: the watcher must wait for it to settle
    {
        std::ofstream file(target, std::ios::binary | std::ios::trunc);
        for (std::size_t at = 0; at < a.size(); at += a.size() / 8 + 1) {
            file.write(a.data() + at, static_cast<std::streamsize>(std::min(a.size() - at, a.size() / 8 + 1)));
            file.flush();
            std::this_thread::sleep_for(40ms);
        }
    }
    check(wait_for([&] { return serving == 1; }), "a slow in-place write is picked up once it settles");
    check(model.status().refused.empty(), "no half-written file was tried");
    // 3. a truncated file: refused, the old model keeps serving
    std::size_t before = refusals();
    write(target, b.substr(0, b.size() / 3));
    check(wait_for([&] { return refusals() > before; }), "a truncated file is refused");
    check(serving == 1, "the previous model keeps serving after a truncated file");
    // 4. a model of another task: refused
    before = refusals();
    write(work / "incoming.tmp", other_task);
    fs::rename(work / "incoming.tmp", target);
    check(wait_for([&] { return refusals() > before; }), "a model of another task is refused");
    check(model.status().last_error.find("cannot replace the emotion model") != std::string::npos,
          "the status says why: " + model.status().last_error);
    check(serving == 1, "the previous model keeps serving after another task's file");
    // 5. valid again
    write(work / "incoming.tmp", b);
    fs::rename(work / "incoming.tmp", target);
    check(wait_for([&] { return serving == 2; }), "a valid file serves again after refusals");
    stop = true;
    caller.join();
    model.close();
    check(failed == 0, "no predict call failed (" + std::to_string(calls.load()) + " calls)");
    check(calls > 100, "the caller kept calling throughout");
    check(model.status().reloads == 3, "three reloads: rename, in-place write, valid again (" +
                                           std::to_string(model.status().reloads) + ")");
    std::printf("%d failed\n", failures);
    return failures ? 1 : 0;
}
