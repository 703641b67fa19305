// A small JSON reader: the model metadata values and the golden vectors' index.json are JSON documents.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace facex {

class JsonError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

class Json {
  public:
    enum class Kind { Null, Bool, Number, String, Array, Object };

    Json() = default;
    static Json parse(const std::string& text);  // throws JsonError naming the offset
    static Json parse_file(const std::string& path);  // throws JsonError naming the file

    Kind kind() const { return kind_; }
    bool is_null() const { return kind_ == Kind::Null; }
    bool is_number() const { return kind_ == Kind::Number; }
    bool is_string() const { return kind_ == Kind::String; }
    bool is_array() const { return kind_ == Kind::Array; }
    bool is_object() const { return kind_ == Kind::Object; }

    double number() const;
    bool boolean() const;
    const std::string& string() const;
    const std::vector<Json>& array() const;
    const std::map<std::string, Json>& object() const;

    bool has(const std::string& key) const;
    const Json& operator[](const std::string& key) const;  // throws JsonError when absent
    const Json& operator[](std::size_t index) const;
    std::size_t size() const;

    // conveniences for the shapes metadata uses
    std::vector<double> numbers() const;
    std::vector<std::string> strings() const;

  private:
    friend class JsonParser;
    Kind kind_ = Kind::Null;
    bool bool_ = false;
    double number_ = 0.0;
    std::string string_;
    std::vector<Json> array_;
    std::map<std::string, Json> object_;
};

}  // namespace facex
