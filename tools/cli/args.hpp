// A small command-line parser for the flashsigmoid tool: declared flags and
// options, `--name value` or `--name=value`, generated help, and typed value
// parsing that names the offending flag on error.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace flashsigmoid::cli {

// A bad command line: printed with a hint to --help, exit status 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ArgParser {
 public:
  ArgParser(std::string usage, std::string summary);

  // A boolean switch, e.g. --causal.
  void flag(const std::string& name, const std::string& help);
  // An option that takes a value, e.g. --heads H.
  void option(const std::string& name, const std::string& metavar, const std::string& help,
              const std::string& default_text = "");

  // Parses argv[first..argc). --help / -h sets help_requested() and stops parsing.
  void parse(int argc, char** argv, int first);

  bool help_requested() const { return help_; }
  bool has(const std::string& name) const;
  std::optional<std::string> value(const std::string& name) const;
  std::string help() const;

 private:
  struct Spec {
    std::string name, metavar, help, default_text;
    bool takes_value = false;
  };
  const Spec* find(const std::string& name) const;

  std::string usage_, summary_;
  std::vector<Spec> specs_;
  std::map<std::string, std::string> values_;  // flags map to ""
  bool help_ = false;
};

// Typed value parsing; errors name the flag and the text.
std::int64_t parse_int(const std::string& flag, const std::string& text, std::int64_t min_value);
float parse_float(const std::string& flag, const std::string& text);
// "L,R" with each an integer >= -1.
std::pair<std::int64_t, std::int64_t> parse_int_pair(const std::string& flag, const std::string& text);
// One of `choices`, else a UsageError listing them.
std::string parse_choice(const std::string& flag, const std::string& text,
                         const std::vector<std::string>& choices);

}  // namespace flashsigmoid::cli
