#include "facex/json.hpp"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace facex {

class JsonParser {
  public:
    explicit JsonParser(const std::string& text) : text_(text) {}

    Json document() {
        Json value = parse_value();
        skip_space();
        if (at_ != text_.size()) fail("trailing characters");
        return value;
    }

  private:
    const std::string& text_;
    std::size_t at_ = 0;

    [[noreturn]] void fail(const std::string& what) const {
        std::ostringstream message;
        message << "JSON: " << what << " at offset " << at_;
        throw JsonError(message.str());
    }

    void skip_space() {
        while (at_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[at_]))) ++at_;
    }

    char peek() {
        skip_space();
        if (at_ >= text_.size()) fail("unexpected end");
        return text_[at_];
    }

    void expect(const char* word) {
        for (const char* c = word; *c; ++c, ++at_)
            if (at_ >= text_.size() || text_[at_] != *c) fail(std::string("expected ") + word);
    }

    Json parse_value() {
        Json value;
        switch (peek()) {
            case '{': value.kind_ = Json::Kind::Object; parse_object(value); break;
            case '[': value.kind_ = Json::Kind::Array; parse_array(value); break;
            case '"': value.kind_ = Json::Kind::String; value.string_ = parse_string(); break;
            case 't': expect("true"); value.kind_ = Json::Kind::Bool; value.bool_ = true; break;
            case 'f': expect("false"); value.kind_ = Json::Kind::Bool; value.bool_ = false; break;
            case 'n': expect("null"); break;
            case 'N': expect("NaN"); value.kind_ = Json::Kind::Number; value.number_ = std::nan(""); break;
            default: value.kind_ = Json::Kind::Number; value.number_ = parse_number(); break;
        }
        return value;
    }

    void parse_object(Json& value) {
        ++at_;
        if (peek() == '}') { ++at_; return; }
        while (true) {
            if (peek() != '"') fail("expected a key");
            std::string key = parse_string();
            if (peek() != ':') fail("expected ':'");
            ++at_;
            value.object_[key] = parse_value();
            char next = peek();
            ++at_;
            if (next == '}') return;
            if (next != ',') fail("expected ',' or '}'");
        }
    }

    void parse_array(Json& value) {
        ++at_;
        if (peek() == ']') { ++at_; return; }
        while (true) {
            value.array_.push_back(parse_value());
            char next = peek();
            ++at_;
            if (next == ']') return;
            if (next != ',') fail("expected ',' or ']'");
        }
    }

    double parse_number() {
        const char* start = text_.c_str() + at_;
        char* end = nullptr;
        double number = std::strtod(start, &end);
        if (end == start) fail("expected a value");
        at_ += static_cast<std::size_t>(end - start);
        return number;
    }

    static void append_utf8(std::string& out, unsigned code) {
        if (code < 0x80) {
            out += static_cast<char>(code);
        } else if (code < 0x800) {
            out += static_cast<char>(0xC0 | (code >> 6));
            out += static_cast<char>(0x80 | (code & 0x3F));
        } else if (code < 0x10000) {
            out += static_cast<char>(0xE0 | (code >> 12));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (code >> 18));
            out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code & 0x3F));
        }
    }

    unsigned hex4() {
        if (at_ + 4 > text_.size()) fail("short \\u escape");
        unsigned code = static_cast<unsigned>(std::stoul(text_.substr(at_, 4), nullptr, 16));
        at_ += 4;
        return code;
    }

    std::string parse_string() {
        ++at_;  // the opening quote
        std::string out;
        while (true) {
            if (at_ >= text_.size()) fail("unterminated string");
            char c = text_[at_++];
            if (c == '"') return out;
            if (c != '\\') { out += c; continue; }
            if (at_ >= text_.size()) fail("unterminated escape");
            char e = text_[at_++];
            switch (e) {
                case 'n': out += '\n'; break;
                case 't': out += '\t'; break;
                case 'r': out += '\r'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'u': {
                    unsigned code = hex4();
                    if (code >= 0xD800 && code < 0xDC00 && at_ + 6 <= text_.size() && text_[at_] == '\\') {
                        at_ += 2;  // a surrogate pair
                        code = 0x10000 + ((code - 0xD800) << 10) + (hex4() - 0xDC00);
                    }
                    append_utf8(out, code);
                    break;
                }
                default: out += e; break;  // \" \\ \/
            }
        }
    }
};

Json Json::parse(const std::string& text) { return JsonParser(text).document(); }

Json Json::parse_file(const std::string& path) {
    std::ifstream file(path);
    if (!file) throw JsonError(path + ": cannot open");
    std::stringstream text;
    text << file.rdbuf();
    try {
        return parse(text.str());
    } catch (const JsonError& error) {
        throw JsonError(path + ": " + error.what());
    }
}

double Json::number() const {
    if (kind_ == Kind::Bool) return bool_ ? 1.0 : 0.0;
    if (kind_ != Kind::Number) throw JsonError("JSON: expected a number");
    return number_;
}

bool Json::boolean() const {
    if (kind_ != Kind::Bool) throw JsonError("JSON: expected true or false");
    return bool_;
}

const std::string& Json::string() const {
    if (kind_ != Kind::String) throw JsonError("JSON: expected a string");
    return string_;
}

const std::vector<Json>& Json::array() const {
    if (kind_ != Kind::Array) throw JsonError("JSON: expected a list");
    return array_;
}

const std::map<std::string, Json>& Json::object() const {
    if (kind_ != Kind::Object) throw JsonError("JSON: expected an object");
    return object_;
}

bool Json::has(const std::string& key) const { return kind_ == Kind::Object && object_.count(key) > 0; }

const Json& Json::operator[](const std::string& key) const {
    auto found = object().find(key);
    if (found == object_.end()) throw JsonError("JSON: no key '" + key + "'");
    return found->second;
}

const Json& Json::operator[](std::size_t index) const {
    if (index >= array().size()) throw JsonError("JSON: index out of range");
    return array_[index];
}

std::size_t Json::size() const {
    if (kind_ == Kind::Array) return array_.size();
    if (kind_ == Kind::Object) return object_.size();
    return 0;
}

std::vector<double> Json::numbers() const {
    std::vector<double> out;
    for (const Json& item : array()) out.push_back(item.number());
    return out;
}

std::vector<std::string> Json::strings() const {
    std::vector<std::string> out;
    for (const Json& item : array()) out.push_back(item.string());
    return out;
}

}  // namespace facex
