#include "facex/spotting.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <unordered_map>

#include "facex/align.hpp"

namespace facex {
namespace {

// Python's round(): halves go to the even neighbour.
int round_even(double value) { return static_cast<int>(std::lrint(value)); }

struct Region {
    double weights[5];
    double dx, dy;  // offset of the centre, in inter-ocular distances
    double hw, hh;  // half width and height, likewise
};

// spotting/features.py's REGIONS: anchors over the five template points (left eye, right eye, nose tip, left
// and right mouth corner), offsets and half sizes in inter-ocular units.
const std::map<std::string, Region>& region_table() {
    static const std::map<std::string, Region> table = {
        {"nose_root", {{0.5, 0.5, 0, 0, 0}, 0.0, 0.0, 0.12, 0.12}},
        {"brow_left", {{1, 0, 0, 0, 0}, -0.05, -0.42, 0.32, 0.14}},
        {"brow_right", {{0, 1, 0, 0, 0}, 0.05, -0.42, 0.32, 0.14}},
        {"brow_inner", {{0.5, 0.5, 0, 0, 0}, 0.0, -0.38, 0.2, 0.14}},
        {"eye_left", {{1, 0, 0, 0, 0}, 0.0, 0.0, 0.25, 0.12}},
        {"eye_right", {{0, 1, 0, 0, 0}, 0.0, 0.0, 0.25, 0.12}},
        {"cheek_left", {{0.5, 0, 0, 0.5, 0}, -0.2, 0.0, 0.18, 0.18}},
        {"cheek_right", {{0, 0.5, 0, 0, 0.5}, 0.2, 0.0, 0.18, 0.18}},
        {"nose", {{0, 0, 1, 0, 0}, 0.0, -0.05, 0.2, 0.14}},
        {"mouth_left", {{0, 0, 0, 1, 0}, 0.0, 0.0, 0.16, 0.16}},
        {"mouth_right", {{0, 0, 0, 0, 1}, 0.0, 0.0, 0.16, 0.16}},
        {"chin", {{0, 0, 0, 0.5, 0.5}, 0.0, 0.42, 0.3, 0.16}},
    };
    return table;
}

double inter_ocular(const cv::Mat& points) {  // hypot, as spotting/features.py computes it
    return std::hypot(points.at<double>(1, 0) - points.at<double>(0, 0), points.at<double>(1, 1) - points.at<double>(0, 1));
}

}  // namespace

FeatureSettings FeatureSettings::from_json(const Json& value) {
    FeatureSettings s;
    if (value.has("size")) s.size = static_cast<int>(value["size"].number());
    if (value.has("margin")) s.margin = value["margin"].number();
    if (value.has("k") && !value["k"].is_null()) s.k = static_cast<int>(value["k"].number());
    if (value.has("method")) s.method = value["method"].string();
    if (value.has("target_fps")) s.target_fps = value["target_fps"].number();
    if (value.has("detector")) s.detector = value["detector"].string();
    s.regions = value.has("regions") ? value["regions"].strings()
                                     : std::vector<std::string>{"nose_root", "brow_left", "brow_right", "brow_inner",
                                                                "eye_left", "eye_right", "cheek_left", "cheek_right",
                                                                "nose", "mouth_left", "mouth_right", "chin"};
    if (s.method != "dis" && s.method != "farneback")
        throw std::invalid_argument("feature_settings: flow method must be dis or farneback, got " + s.method);
    for (const std::string& name : s.regions)
        if (!region_table().count(name)) throw std::invalid_argument("feature_settings: unknown region " + name);
    if (s.regions.size() < 2) throw std::invalid_argument("feature_settings: need a reference and one more region");
    return s;
}

int FeatureSettings::step(double fps) const { return std::max(1, round_even(fps / target_fps)); }

int FeatureSettings::gap(double fps) const { return k ? *k : std::max(1, round_even(0.1 * fps / step(fps))); }

std::vector<RegionBox> region_boxes(const FeatureSettings& settings) {
    cv::Mat points = template_points(settings.size, settings.margin);
    double iod = inter_ocular(points);
    std::vector<RegionBox> boxes;
    for (const std::string& name : settings.regions) {
        const Region& r = region_table().at(name);
        double weight = 0, cx = 0, cy = 0;
        for (int i = 0; i < 5; ++i) {
            cx += r.weights[i] * points.at<double>(i, 0);
            cy += r.weights[i] * points.at<double>(i, 1);
            weight += r.weights[i];
        }
        cx = cx / weight + r.dx * iod;
        cy = cy / weight + r.dy * iod;
        RegionBox box{std::max(0, static_cast<int>(std::floor(cx - r.hw * iod))),
                      std::max(0, static_cast<int>(std::floor(cy - r.hh * iod))),
                      std::min(settings.size, static_cast<int>(std::ceil(cx + r.hw * iod))),
                      std::min(settings.size, static_cast<int>(std::ceil(cy + r.hh * iod)))};
        if (box.x1 - box.x0 < 2 || box.y1 - box.y0 < 2)
            throw std::invalid_argument("region " + name + " falls outside the face");
        boxes.push_back(box);
    }
    return boxes;
}

FlowFeatures::FlowFeatures(const FeatureSettings& settings)
    : settings_(settings), boxes_(region_boxes(settings)), iod_(inter_ocular(template_points(settings.size, settings.margin))) {}

cv::Mat FlowFeatures::flow(const cv::Mat& from, const cv::Mat& to) {
    cv::Mat out;
    if (settings_.method == "dis") {
        if (!dis_) dis_ = cv::DISOpticalFlow::create(cv::DISOpticalFlow::PRESET_FAST);
        dis_->calc(from, to, out);
    } else {
        cv::calcOpticalFlowFarneback(from, to, out, 0.5, 3, 15, 3, 5, 1.2, 0);
    }
    return out;
}

std::vector<float> FlowFeatures::pooled(const cv::Mat& flow) const {
    auto mean_in = [&](const RegionBox& box, double shift_x, double shift_y, double out[3]) {
        double sx = 0, sy = 0, sm = 0;
        for (int y = box.y0; y < box.y1; ++y) {
            const cv::Vec2f* row = flow.ptr<cv::Vec2f>(y);
            for (int x = box.x0; x < box.x1; ++x) {
                double dx = static_cast<double>(row[x][0]) - shift_x, dy = static_cast<double>(row[x][1]) - shift_y;
                sx += dx;
                sy += dy;
                sm += std::sqrt(dx * dx + dy * dy);  // as spotting/features.py: not hypot
            }
        }
        double n = static_cast<double>((box.x1 - box.x0) * (box.y1 - box.y0));
        out[0] = sx / n, out[1] = sy / n, out[2] = sm / n;
    };
    double reference[3];
    mean_in(boxes_[0], 0.0, 0.0, reference);  // the head's own motion
    std::vector<float> features;
    features.reserve(3 * (boxes_.size() - 1) + 2);
    for (std::size_t r = 1; r < boxes_.size(); ++r) {
        double region[3];
        mean_in(boxes_[r], reference[0], reference[1], region);
        for (double v : region) features.push_back(static_cast<float>(v / iod_));
    }
    features.push_back(static_cast<float>(reference[0] / iod_));
    features.push_back(static_cast<float>(reference[1] / iod_));
    return features;
}

// ---------------------------------------------------------------- scores -> intervals

int SpotSettings::gap(const std::string& type) const {
    auto found = min_gap.find(type);
    return found == min_gap.end() ? 3 : found->second;
}

std::map<std::string, std::pair<std::optional<int>, std::optional<int>>> plausible_lengths(double fps) {
    int half = round_even(0.5 * fps);
    return {{"micro", {std::max(2, round_even(0.1 * fps)), half}}, {"macro", {half + 1, round_even(4.5 * fps)}}};
}

double iou(std::int64_t a0, std::int64_t a1, std::int64_t b0, std::int64_t b1) {
    std::int64_t start = std::max(a0, b0), end = std::min(a1, b1);
    if (start > end || a1 < a0 || b1 < b0) return 0.0;
    return static_cast<double>(end - start + 1) / static_cast<double>(std::max(a1, b1) - std::min(a0, b0) + 1);
}

namespace {

std::vector<int> local_peaks(const std::vector<float>& x, double height, int min_gap) {
    const int n = static_cast<int>(x.size());
    std::vector<int> candidates;
    for (int i = 0; i < n; ++i) {
        double value = x[i], left = i > 0 ? x[i - 1] : -INFINITY, right = i + 1 < n ? x[i + 1] : -INFINITY;
        if (value >= height && value > left && value >= right) candidates.push_back(i);
    }
    std::stable_sort(candidates.begin(), candidates.end(), [&](int a, int b) {
        return x[a] != x[b] ? x[a] > x[b] : a < b;
    });
    std::vector<int> kept;
    for (int index : candidates) {
        bool apart = std::all_of(kept.begin(), kept.end(), [&](int k) { return std::abs(index - k) >= min_gap; });
        if (apart) kept.push_back(index);
    }
    std::sort(kept.begin(), kept.end());
    return kept;
}

std::pair<int, int> grow(const std::vector<float>& action, int peak, double boundary) {
    const float floor = static_cast<float>(boundary) * action[peak];  // float32, as NumPy computes it
    int left = peak, right = peak;
    while (left > 0 && action[left - 1] >= floor) --left;
    while (right < static_cast<int>(action.size()) - 1 && action[right + 1] >= floor) ++right;
    return {left, right};
}

int refine(const std::vector<float>& score, int around, int lo, int hi) {
    lo = std::max(lo, 0);
    hi = std::min(hi, static_cast<int>(score.size()) - 1);
    if (hi < lo) return around;
    int best = lo;
    for (int i = lo + 1; i <= hi; ++i)
        if (score[i] > score[best]) best = i;
    return score[best] > 0 ? best : around;
}

struct Candidate {
    int onset, apex, offset;
    double score;
};

std::vector<Candidate> candidates(const std::vector<float>& scores, int type_index, const SpotSettings& settings,
                                  double threshold, const std::string& type) {
    const int frames = static_cast<int>(scores.size() / 6), base = 3 * type_index;
    std::vector<float> action(frames), start(frames), end(frames);
    for (int t = 0; t < frames; ++t) {
        action[t] = scores[6 * t + base];
        start[t] = scores[6 * t + base + 1];
        end[t] = scores[6 * t + base + 2];
    }
    std::vector<Candidate> found;
    for (int peak : local_peaks(action, threshold, settings.gap(type))) {
        auto [left, right] = grow(action, peak, settings.boundary);
        int reach = std::max(1, (right - left + 1) / 2);
        int onset = refine(start, left, left - reach, std::min(left + reach, peak));
        int offset = refine(end, right, std::max(right - reach, peak), right + reach);
        found.push_back({std::min(onset, peak), peak, std::max(offset, peak), static_cast<double>(action[peak])});
    }
    return found;
}

bool within(std::int64_t length, const std::pair<std::optional<int>, std::optional<int>>& bounds) {
    return (!bounds.first || length >= *bounds.first) && (!bounds.second || length <= *bounds.second);
}

std::vector<Interval> nms(std::vector<Interval> intervals, double threshold = 0.5) {
    std::stable_sort(intervals.begin(), intervals.end(), [](const Interval& a, const Interval& b) {
        return a.score != b.score ? a.score > b.score : a.onset < b.onset;
    });
    std::vector<Interval> kept;
    for (const Interval& i : intervals) {
        bool clear = std::all_of(kept.begin(), kept.end(),
                                 [&](const Interval& k) { return iou(i.onset, i.offset, k.onset, k.offset) < threshold; });
        if (clear) kept.push_back(i);
    }
    std::stable_sort(kept.begin(), kept.end(), [](const Interval& a, const Interval& b) {
        return a.onset != b.onset ? a.onset < b.onset : a.offset < b.offset;
    });
    return kept;
}

}  // namespace

std::vector<Interval> proposals(const std::vector<float>& scores, const std::vector<std::int64_t>& numbers,
                                const SpotSettings& settings, int step) {
    if (scores.size() != 6 * numbers.size())
        throw std::invalid_argument("proposals: scores must be [T, 6] with one frame number per row");
    std::vector<Interval> out;
    for (std::size_t t = 0; t < kTypes.size(); ++t) {
        const std::string& type = kTypes[t];
        for (const Candidate& c : candidates(scores, static_cast<int>(t), settings, settings.thresholds.at(type), type)) {
            Interval interval{numbers[c.onset], numbers[c.apex], numbers[c.offset] + step - 1, type, c.score};
            auto bounds = settings.lengths.find(type);
            if (bounds == settings.lengths.end() || within(interval.length(), bounds->second)) out.push_back(interval);
        }
    }
    return out;
}

std::vector<Interval> select(const std::vector<Interval>& found, const std::map<std::string, double>& thresholds) {
    std::vector<Interval> kept;
    for (const std::string& type : kTypes) {
        auto threshold = thresholds.find(type);
        std::vector<Interval> chosen;
        for (const Interval& i : found)
            if (i.type == type && threshold != thresholds.end() && i.score >= threshold->second) chosen.push_back(i);
        for (const Interval& i : nms(chosen)) kept.push_back(i);
    }
    std::stable_sort(kept.begin(), kept.end(), [](const Interval& a, const Interval& b) {
        return a.onset != b.onset ? a.onset < b.onset : a.type < b.type;
    });
    return kept;
}

std::vector<Interval> spot(const std::vector<float>& scores, const std::vector<std::int64_t>& numbers,
                           const SpotSettings& settings, int step) {
    return select(proposals(scores, numbers, settings, step), settings.thresholds);
}

// ---------------------------------------------------------------- streaming

SpotSettings SpottingSettings::spot_settings(double fps, int step) const {
    SpotSettings s;
    s.thresholds = thresholds;
    s.lengths = plausible_lengths(fps * step);
    s.boundary = boundary;
    int gap = std::max(1, round_even(min_gap_seconds * fps));
    for (const std::string& type : kTypes) s.min_gap[type] = gap;
    return s;
}

StreamingSpotter::StreamingSpotter(ScoreFunction scores, const SpottingSettings& settings, double source_fps, int chunk)
    : score_fn_(std::move(scores)),
      features_settings_(settings.features),
      step_(settings.features.step(source_fps)),
      k_(settings.features.gap(source_fps)),
      radius_(settings.receptive_radius),
      chunk_(chunk),
      dim_(settings.features.dim()),
      fps_(source_fps / step_),
      settings_(settings.spot_settings(fps_, step_)),
      maker_(settings.features) {
    int longest = 0;
    for (const auto& [type, bounds] : settings_.lengths)
        longest = std::max(longest, bounds.second ? *bounds.second : static_cast<int>(4.5 * fps_ * step_));
    int reach = static_cast<int>(std::ceil(static_cast<double>(longest) / step_)) + 2;
    int gap = 0;
    for (const std::string& type : kTypes) gap = std::max(gap, settings_.gap(type));
    margin_ = 2 * reach + gap;
}

std::vector<Interval> StreamingSpotter::push(const cv::Mat& grey_face, std::int64_t number) {
    std::int64_t index = seen_++;
    if (index % step_) return {};
    faces_.push_back(grey_face.clone());
    if (static_cast<int>(faces_.size()) > k_ + 1) faces_.pop_front();
    std::size_t t = numbers_.size();
    if (t == 0) {
        features_.insert(features_.end(), dim_, 0.0f);
    } else {
        int from = std::max(0, static_cast<int>(faces_.size()) - 1 - k_);
        std::vector<float> value = maker_.pooled(maker_.flow(faces_[from], grey_face));
        features_.insert(features_.end(), value.begin(), value.end());
    }
    numbers_.push_back(number);
    if (static_cast<int>(numbers_.size()) - radius_ - static_cast<int>(scores_.size() / 6) >= chunk_) {
        score(false);
        return emit(false);
    }
    return {};
}

std::vector<Interval> StreamingSpotter::flush() {
    score(true);
    return emit(true);
}

void StreamingSpotter::score(bool final) {
    int done = static_cast<int>(scores_.size() / 6), total = static_cast<int>(numbers_.size());
    int end = final ? total : total - radius_;
    if (end <= done) return;
    int start = std::max(0, done - radius_);
    std::vector<float> window(features_.begin() + static_cast<std::ptrdiff_t>(start) * dim_, features_.end());
    std::vector<float> scored = score_fn_(window, total - start, dim_);
    if (scored.size() != static_cast<std::size_t>(total - start) * 6)
        throw std::runtime_error("spotting model gave " + std::to_string(scored.size()) + " scores for " +
                                 std::to_string(total - start) + " frames");
    scores_.insert(scores_.end(), scored.begin() + static_cast<std::ptrdiff_t>(done - start) * 6,
                   scored.begin() + static_cast<std::ptrdiff_t>(end - start) * 6);
}

std::vector<Interval> StreamingSpotter::emit(bool final) {
    std::size_t known = scores_.size() / 6;
    std::size_t limit = final ? known : (known > static_cast<std::size_t>(margin_) ? known - margin_ : 0);
    if (!final && known < static_cast<std::size_t>(margin_)) return {};
    if (limit <= cut_) return {};
    std::size_t start = cut_ > static_cast<std::size_t>(margin_) ? cut_ - margin_ : 0;
    std::vector<float> scores(scores_.begin() + static_cast<std::ptrdiff_t>(start) * 6,
                              scores_.begin() + static_cast<std::ptrdiff_t>(known) * 6);
    std::vector<std::int64_t> numbers(numbers_.begin() + static_cast<std::ptrdiff_t>(start),
                                      numbers_.begin() + static_cast<std::ptrdiff_t>(known));
    std::unordered_map<std::int64_t, std::size_t> apex_index;
    for (std::size_t i = 0; i < numbers_.size(); ++i) apex_index[numbers_[i]] = i;
    std::vector<Interval> kept;
    for (const Interval& i : select(proposals(scores, numbers, settings_, step_), settings_.thresholds)) {
        std::size_t at = apex_index.at(i.apex);
        if (cut_ <= at && at < limit) kept.push_back(i);
    }
    cut_ = limit;
    return kept;
}

RecordedStream stream_recorded(const std::vector<double>& recorded_scores, const SpottingSettings& settings,
                               double source_fps, const NpyArray& grey_faces, const std::vector<double>& numbers,
                               int chunk) {
    const StreamingSpotter* spotter = nullptr;
    const std::size_t dim = settings.features.dim();
    ScoreFunction rows = [&](const std::vector<float>&, int frames, int) {
        std::size_t start = spotter->features().size() / dim - frames, end = start + frames;
        if (end * 6 > recorded_scores.size())
            throw std::runtime_error("the recording holds scores for " + std::to_string(recorded_scores.size() / 6) +
                                     " frames; streaming reached frame " + std::to_string(end));
        return std::vector<float>(recorded_scores.begin() + static_cast<std::ptrdiff_t>(start) * 6,
                                  recorded_scores.begin() + static_cast<std::ptrdiff_t>(end) * 6);
    };
    StreamingSpotter streaming(rows, settings, source_fps, chunk);
    spotter = &streaming;
    RecordedStream out;
    for (std::size_t i = 0; i < numbers.size(); ++i) {
        auto found = streaming.push(frame_view(grey_faces, i), static_cast<std::int64_t>(numbers[i]));
        out.intervals.insert(out.intervals.end(), found.begin(), found.end());
    }
    auto tail = streaming.flush();
    out.intervals.insert(out.intervals.end(), tail.begin(), tail.end());
    out.features = streaming.features();
    out.step = streaming.step();
    return out;
}

}  // namespace facex
