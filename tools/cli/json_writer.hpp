// A minimal JSON writer for the CLI's machine-readable output (`flashsigmoid run --json`): nested
// objects and arrays of numbers, strings, booleans and null, written in order. Non-finite numbers
// (a NaN error, say) become null, which JSON parsers accept.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

namespace flashsigmoid::cli {

class JsonWriter {
 public:
  // Containers. key() precedes every value inside an object.
  JsonWriter& begin_object() { return open('{'); }
  JsonWriter& end_object() { return close('}'); }
  JsonWriter& begin_array() { return open('['); }
  JsonWriter& end_array() { return close(']'); }
  JsonWriter& key(const std::string& k) {
    comma();
    quoted(k);
    out_ += ':';
    after_key_ = true;
    return *this;
  }
  JsonWriter& value(const std::string& s) {
    comma();
    quoted(s);
    return *this;
  }
  JsonWriter& value(const char* s) { return value(std::string(s)); }
  JsonWriter& value(bool b) { return raw(b ? "true" : "false"); }
  JsonWriter& value(std::int64_t i) { return raw(std::to_string(i)); }
  JsonWriter& value(std::uint64_t i) { return raw(std::to_string(i)); }
  JsonWriter& value(int i) { return raw(std::to_string(i)); }
  JsonWriter& value(double x) {
    if (!std::isfinite(x)) return null();
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", x);
    return raw(buf);
  }
  JsonWriter& null() { return raw("null"); }

  const std::string& str() const { return out_; }

 private:
  JsonWriter& open(char c) {
    comma();
    out_ += c;
    first_ = true;
    return *this;
  }
  JsonWriter& close(char c) {
    out_ += c;
    first_ = false;
    return *this;
  }
  JsonWriter& raw(const std::string& s) {
    comma();
    out_ += s;
    return *this;
  }
  // A separator before every element but the first of a container (and none after a key).
  void comma() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    if (!first_ && !out_.empty()) out_ += ',';
    first_ = false;
  }
  void quoted(const std::string& s) {
    out_ += '"';
    for (const char ch : s) {
      const auto c = static_cast<unsigned char>(ch);
      if (c == '"' || c == '\\') {
        out_ += '\\';
        out_ += ch;
      } else if (c < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        out_ += buf;
      } else {
        out_ += ch;
      }
    }
    out_ += '"';
  }

  std::string out_;
  bool first_ = true;
  bool after_key_ = false;
};

}  // namespace flashsigmoid::cli
