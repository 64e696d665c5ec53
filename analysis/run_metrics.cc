#include "analysis/run_metrics.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : text_(text) {}

  absl::StatusOr<FlatJsonObject> Object() {
    FlatJsonObject object;
    SkipSpace();
    RETURN_IF_ERROR(Expect('{', "'{'"));
    SkipSpace();
    if (Peek() == '}') {
      ++at_;
    } else {
      for (;;) {
        SkipSpace();
        if (Peek() != '"') return Error("a string key");
        ASSIGN_OR_RETURN(std::string key, String());
        SkipSpace();
        RETURN_IF_ERROR(Expect(':', "':'"));
        SkipSpace();
        ASSIGN_OR_RETURN(JsonValue value, Value());
        object[key] = std::move(value);
        SkipSpace();
        if (Peek() == ',') {
          ++at_;
          continue;
        }
        RETURN_IF_ERROR(Expect('}', "',' or '}'"));
        break;
      }
    }
    SkipSpace();
    if (at_ != text_.size()) return Error("the end of the line after the object");
    return object;
  }

 private:
  char Peek() const { return at_ < text_.size() ? text_[at_] : '\0'; }
  void SkipSpace() {
    while (at_ < text_.size() && (text_[at_] == ' ' || text_[at_] == '\t' || text_[at_] == '\r')) ++at_;
  }
  absl::Status Error(const std::string& expected) const {
    const std::string found = at_ < text_.size() ? absl::StrCat("'", std::string(text_.substr(at_, 1)), "'") : "the end of the line";
    return absl::InvalidArgumentError(absl::StrCat("column ", at_ + 1, ": expected ", expected, ", found ", found));
  }
  absl::Status Expect(char c, const std::string& what) {
    if (Peek() != c) return Error(what);
    ++at_;
    return absl::OkStatus();
  }
  bool Literal(std::string_view word) {
    if (text_.substr(at_, word.size()) != word) return false;
    at_ += word.size();
    return true;
  }

  absl::StatusOr<std::string> String() {
    ++at_;  // the opening quote
    std::string out;
    while (at_ < text_.size() && text_[at_] != '"') {
      char c = text_[at_++];
      if (static_cast<unsigned char>(c) < 0x20) return Error("no control characters in a string");
      if (c == '\\') {
        if (at_ >= text_.size()) break;
        const char e = text_[at_++];
        switch (e) {
          case '"': case '\\': case '/': c = e; break;
          case 'b': c = '\b'; break;
          case 'f': c = '\f'; break;
          case 'n': c = '\n'; break;
          case 'r': c = '\r'; break;
          case 't': c = '\t'; break;
          case 'u':  // kept as '?': metrics keys and values are ASCII
            if (at_ + 4 > text_.size()) return Error("four hex digits after \\u");
            at_ += 4;
            c = '?';
            break;
          default:
            --at_;
            return Error("an escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u)");
        }
      }
      out += c;
    }
    RETURN_IF_ERROR(Expect('"', "a closing '\"'"));
    return out;
  }

  absl::StatusOr<JsonValue> Value() {
    const char c = Peek();
    if (c == '"') {
      ASSIGN_OR_RETURN(std::string s, String());
      return JsonValue(std::move(s));
    }
    if (Literal("true")) return JsonValue(1.0);
    if (Literal("false")) return JsonValue(0.0);
    if (Literal("null")) return JsonValue(kMissing);
    if (c == '-' || (c >= '0' && c <= '9')) {
      size_t end = at_ + 1;
      while (end < text_.size() && std::string_view("0123456789+-.eE").find(text_[end]) != std::string_view::npos) ++end;
      const std::string number(text_.substr(at_, end - at_));
      char* parsed_end = nullptr;
      const double v = std::strtod(number.c_str(), &parsed_end);
      if (parsed_end != number.c_str() + number.size()) return Error("a number");
      at_ = end;
      return JsonValue(v);
    }
    if (c == '{' || c == '[') return Error("a number, string, true, false or null (metrics lines are flat)");
    return Error("a value");
  }

  std::string_view text_;
  size_t at_ = 0;
};

// Bounds of what a metrics line can hold: anything outside them was not
// written by a run, and is refused before it reaches a chart.
constexpr double kMaxCount = 1e12;          // rounds, episodes
constexpr double kMaxWorkers = 1e6;         // workers alive
constexpr double kMaxMagnitude = 1e30;      // losses
constexpr double kMaxSecondsPerRound = 1e7;  // about 4 months
constexpr double kMaxRoundsPerSecond = 1e9;

enum class Presence { kRequired, kOptional };

// A metrics line's fields, looked up by name. Every value it hands out is
// finite and within the bounds given, or the field is missing (kMissing) where
// that is allowed; errors name the field and its value.
class Fields {
 public:
  explicit Fields(const FlatJsonObject& object) : object_(object) {}

  // A number in [lo, hi]. An optional field may be absent or null (kMissing).
  absl::Status Number(const char* key, Presence presence, double lo, double hi, double* out) const {
    auto it = object_.find(key);
    if (it == object_.end()) {
      if (presence == Presence::kRequired) return absl::InvalidArgumentError(absl::StrCat("missing field \"", key, "\""));
      return absl::OkStatus();
    }
    const double* v = std::get_if<double>(&it->second);
    if (v == nullptr) return absl::InvalidArgumentError(absl::StrCat("field \"", key, "\" is not a number"));
    if (std::isnan(*v) && presence == Presence::kOptional) return absl::OkStatus();  // null
    if (!(*v >= lo && *v <= hi))
      return absl::InvalidArgumentError(absl::StrCat("field \"", key, "\" is ", *v, ", not a number in [", lo, ", ", hi, "]"));
    *out = *v;
    return absl::OkStatus();
  }

  // A whole number in [0, max].
  absl::Status Count(const char* key, Presence presence, double max, double* out) const {
    double v = kMissing;
    RETURN_IF_ERROR(Number(key, presence, 0, max, &v));
    if (std::isnan(v)) return absl::OkStatus();
    if (v != std::floor(v)) return absl::InvalidArgumentError(absl::StrCat("field \"", key, "\" is ", v, ", not a whole number"));
    *out = v;
    return absl::OkStatus();
  }
  absl::Status Count(const char* key, int64_t* out) const {
    double v = 0;
    RETURN_IF_ERROR(Count(key, Presence::kRequired, kMaxCount, &v));
    *out = static_cast<int64_t>(v);  // a whole number in [0, 1e12]
    return absl::OkStatus();
  }

 private:
  const FlatJsonObject& object_;
};

absl::StatusOr<RoundMetrics> ParseRound(const Fields& f) {
  RoundMetrics m;
  RETURN_IF_ERROR(f.Count("round", &m.round));
  RETURN_IF_ERROR(f.Count("rounds", &m.rounds));
  RETURN_IF_ERROR(f.Number("loss", Presence::kRequired, -kMaxMagnitude, kMaxMagnitude, &m.loss));
  RETURN_IF_ERROR(f.Number("seconds", Presence::kRequired, 0, kMaxSecondsPerRound, &m.seconds));
  RETURN_IF_ERROR(f.Number("rounds_per_second", Presence::kRequired, 0, kMaxRoundsPerSecond, &m.rounds_per_second));
  RETURN_IF_ERROR(f.Count("workers", Presence::kOptional, kMaxWorkers, &m.workers));
  RETURN_IF_ERROR(f.Number("accuracy", Presence::kOptional, 0, 1, &m.accuracy));
  return m;
}

absl::StatusOr<EvalMetrics> ParseEval(const Fields& f) {
  EvalMetrics m;
  RETURN_IF_ERROR(f.Count("round", &m.round));
  double episodes = 0;
  RETURN_IF_ERROR(f.Count("episodes", Presence::kRequired, std::numeric_limits<int>::max(), &episodes));
  m.episodes = static_cast<int>(episodes);  // a whole number that fits an int
  RETURN_IF_ERROR(f.Number("loss", Presence::kRequired, -kMaxMagnitude, kMaxMagnitude, &m.loss));
  RETURN_IF_ERROR(f.Number("loss_ci95", Presence::kOptional, 0, kMaxMagnitude, &m.loss_ci95));
  RETURN_IF_ERROR(f.Number("accuracy", Presence::kOptional, 0, 1, &m.accuracy));
  RETURN_IF_ERROR(f.Number("accuracy_ci95", Presence::kOptional, 0, 1, &m.accuracy_ci95));
  RETURN_IF_ERROR(f.Number("accuracy_inductive", Presence::kOptional, 0, 1, &m.accuracy_inductive));
  RETURN_IF_ERROR(f.Number("accuracy_inductive_ci95", Presence::kOptional, 0, 1, &m.accuracy_inductive_ci95));
  return m;
}

}  // namespace

absl::StatusOr<FlatJsonObject> ParseFlatJsonObject(std::string_view text) { return JsonParser(text).Object(); }

absl::StatusOr<RunMetrics> ReadRunMetrics(const std::string& run_dir) {
  const std::string path = (std::filesystem::path(run_dir) / "metrics.jsonl").string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open (not a run directory?)"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::filesystem::path dir = std::filesystem::path(run_dir).lexically_normal();
  std::string name = dir.filename().string();
  if (name.empty()) name = dir.parent_path().filename().string();  // "runs/x/"
  return ParseRunMetrics(buffer.str(), path, std::move(name));
}

absl::StatusOr<RunMetrics> ParseRunMetrics(std::string_view text, const std::string& path, std::string name) {
  RunMetrics run;
  run.name = std::move(name);
  int64_t lines = 0;
  double wall = 0;
  size_t start = 0;
  for (int64_t number = 1; start < text.size(); ++number) {
    const size_t end = text.find('\n', start);
    const bool torn = end == std::string::npos;
    const std::string_view line(text.data() + start, (torn ? text.size() : end) - start);
    start = torn ? text.size() : end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    auto where = [&](const absl::Status& s) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", number, ": ", s.message()));
    };
    absl::StatusOr<FlatJsonObject> object = ParseFlatJsonObject(line);
    if (!object.ok()) {
      if (torn) break;
      return where(object.status());
    }
    ++lines;
    const Fields fields(*object);
    auto kind = object->find("kind");
    const std::string* kind_name = kind == object->end() ? nullptr : std::get_if<std::string>(&kind->second);
    if (kind_name == nullptr) return where(absl::InvalidArgumentError("missing string field \"kind\""));
    if (*kind_name == "round") {
      absl::StatusOr<RoundMetrics> m = ParseRound(fields);
      if (!m.ok()) return where(m.status());
      wall += static_cast<double>(m->rounds) * m->seconds;
      m->wall_seconds = wall;
      if (std::isfinite(m->accuracy)) run.classification = true;
      run.rounds.push_back(*m);
    } else if (*kind_name == "eval" || *kind_name == "final_eval") {
      absl::StatusOr<EvalMetrics> m = ParseEval(fields);
      if (!m.ok()) return where(m.status());
      if (*kind_name == "eval") {
        run.evals.push_back(*m);
      } else {
        run.final_eval = *m;
      }
    }
  }
  if (lines == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": no metrics lines (empty file)"));
  return run;
}

}  // namespace reptile
