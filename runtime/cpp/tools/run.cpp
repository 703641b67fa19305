// facex_run VIDEO --models DIR --out results.csv [--detector none|dlib|auto] [--landmarks FILE] [--clip-stride 8]
//           [--threads N] [--cpu] [--strict]
// Every model of DIR on each frame, writing the files and columns `python -m runtime` writes: one row per frame in
// --out, the spotted intervals in <out>_intervals.csv and the spot-then-recognise rows in <out>_strs.csv. A model
// file the contract refuses is named on stderr and the others are served (--strict: nothing runs).
#include <algorithm>
#include <cstdio>
#include <map>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>
#include <string>
#include <vector>

#include "facex/pipeline.hpp"

namespace {

struct Arguments {
    std::string video, models, out, detector = "none", landmarks;
    int clip_stride = 8, threads = 0;
    bool strict = false, cpu = false;
};

Arguments parse(int argc, char** argv) {
    Arguments a;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
            return argv[++i];
        };
        if (arg == "--models") a.models = value();
        else if (arg == "--out") a.out = value();
        else if (arg == "--detector") a.detector = value();
        else if (arg == "--landmarks") a.landmarks = value();
        else if (arg == "--clip-stride") a.clip_stride = std::stoi(value());
        else if (arg == "--threads") a.threads = std::stoi(value());
        else if (arg == "--strict") a.strict = true;
        else if (arg == "--cpu") a.cpu = true;
        else if (!arg.empty() && arg[0] == '-') throw std::invalid_argument("unknown option " + arg);
        else a.video = arg;
    }
    if (a.video.empty() || a.models.empty() || a.out.empty())
        throw std::invalid_argument("usage: facex_run VIDEO --models DIR --out results.csv [--detector none|dlib|auto] "
                                    "[--landmarks FILE] [--clip-stride N] [--threads N] [--cpu] [--strict]");
    return a;
}

std::string csv_cell(const std::string& value) {
    if (value.find_first_of(",\"\n") == std::string::npos) return value;
    std::string quoted = "\"";
    for (char c : value) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
    return quoted + "\"";
}

void write_row(std::ofstream& file, const std::vector<std::string>& cells) {
    for (std::size_t i = 0; i < cells.size(); ++i) file << (i ? "," : "") << csv_cell(cells[i]);
    file << "\r\n";  // as Python's csv module writes
}

std::string fixed(double value, int decimals) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
    return buffer;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        Arguments args = parse(argc, argv);
        cv::VideoCapture capture(args.video);
        if (!capture.isOpened()) throw std::invalid_argument(args.video + ": cannot open the video");
        double fps = capture.get(cv::CAP_PROP_FPS);
        if (!(fps > 0)) fps = 30.0;
        facex::ModelOptions options;
        options.watch = true;
        options.keep_labels = true;
        options.threads = args.threads;
        if (args.cpu) options.providers = {"CPUExecutionProvider"};
        std::vector<std::pair<std::string, std::string>> refused;
        facex::Models models = facex::find_models(args.models, options, args.strict, &refused);
        for (const auto& [file, reason] : refused)
            std::fprintf(stderr, "facex_run: not serving %s: %s\n", std::filesystem::path(file).filename().c_str(), reason.c_str());
        facex::Pipeline pipeline(models, fps, facex::FaceFinder(args.detector, args.landmarks), args.clip_stride);
        const std::string video = std::filesystem::path(args.video).stem().string();
        std::filesystem::path out(args.out);
        if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
        std::ofstream frames(out);
        std::vector<std::string> columns = pipeline.columns();
        write_row(frames, columns);
        std::vector<facex::Interval> intervals;
        cv::Mat bgr, rgb;
        std::int64_t number = 0;
        while (capture.read(bgr)) {
            cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
            facex::FrameResult result = pipeline.frame(rgb, number++);
            intervals.insert(intervals.end(), result.intervals.begin(), result.intervals.end());
            std::map<std::string, std::string> row = pipeline.row(result);
            std::vector<std::string> cells;
            for (const std::string& c : columns) cells.push_back(row.count(c) ? row[c] : "");
            write_row(frames, cells);
        }
        std::vector<facex::Interval> tail = pipeline.finish();
        intervals.insert(intervals.end(), tail.begin(), tail.end());
        std::string written = out.string();
        if (models.count("spotting")) {
            std::stable_sort(intervals.begin(), intervals.end(), [](const facex::Interval& a, const facex::Interval& b) {
                return a.onset != b.onset ? a.onset < b.onset : a.type < b.type;
            });
            std::filesystem::path path = out.parent_path() / (out.stem().string() + "_intervals.csv");
            std::ofstream file(path);
            write_row(file, {"vid", "onset", "offset", "type", "apex", "score", "onset_s", "apex_s", "offset_s"});
            for (const facex::Interval& i : intervals)
                write_row(file, {video, std::to_string(i.onset), std::to_string(i.offset), i.type == "micro" ? "me" : "mae",
                                 std::to_string(i.apex), fixed(i.score, 4), fixed(i.onset / fps, 3), fixed(i.apex / fps, 3),
                                 fixed(i.offset / fps, 3)});
            written += ", " + path.string();
        }
        if (models.count("spotting") && models.count("microexp")) {
            std::filesystem::path path = out.parent_path() / (out.stem().string() + "_strs.csv");
            std::ofstream file(path);
            write_row(file, {"subject", "video", "onset", "offset", "emotion"});
            for (const facex::Recognised& r : pipeline.recognised())
                write_row(file, {video, video, std::to_string(r.onset), std::to_string(r.offset), r.emotion});
            written += ", " + path.string();
        }
        std::printf("%lld frames -> %s\n", static_cast<long long>(number), written.c_str());
        return 0;
    } catch (const std::exception& error) {
        std::fprintf(stderr, "facex_run: %s\n", error.what());
        return 2;
    }
}
