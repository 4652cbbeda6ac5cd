#include "args.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

namespace flashsigmoid::cli {

ArgParser::ArgParser(std::string usage, std::string summary)
    : usage_(std::move(usage)), summary_(std::move(summary)) {}

void ArgParser::flag(const std::string& name, const std::string& help) {
  specs_.push_back({name, "", help, "", false});
}

void ArgParser::option(const std::string& name, const std::string& metavar, const std::string& help,
                       const std::string& default_text) {
  specs_.push_back({name, metavar, help, default_text, true});
}

const ArgParser::Spec* ArgParser::find(const std::string& name) const {
  for (const Spec& s : specs_) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

void ArgParser::parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      help_ = true;
      return;
    }
    if (arg.rfind("--", 0) != 0) {
      throw UsageError("unexpected argument '" + arg + "' (options start with --)");
    }
    std::string name = arg;
    std::optional<std::string> inline_value;
    if (const auto eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      inline_value = arg.substr(eq + 1);
    }
    const Spec* spec = find(name);
    if (spec == nullptr) throw UsageError("unknown option '" + name + "'");
    if (values_.count(name)) throw UsageError("option '" + name + "' given twice");
    if (!spec->takes_value) {
      if (inline_value) throw UsageError("option '" + name + "' takes no value, got '" + *inline_value + "'");
      values_[name] = "";
      continue;
    }
    if (inline_value) {
      values_[name] = *inline_value;
    } else if (i + 1 < argc) {
      values_[name] = argv[++i];
    } else {
      throw UsageError("option '" + name + "' needs a value (" + spec->metavar + ")");
    }
  }
}

bool ArgParser::has(const std::string& name) const { return values_.count(name) > 0; }

std::optional<std::string> ArgParser::value(const std::string& name) const {
  const auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string ArgParser::help() const {
  std::ostringstream os;
  os << "usage: " << usage_ << "\n\n" << summary_ << "\n\noptions:\n";
  std::size_t width = 0;
  std::vector<std::string> heads;
  for (const Spec& s : specs_) {
    heads.push_back(s.name + (s.takes_value ? " " + s.metavar : ""));
    width = std::max(width, heads.back().size());
  }
  heads.push_back("-h, --help");
  width = std::max(width, heads.back().size());
  for (std::size_t i = 0; i < specs_.size(); ++i) {
    os << "  " << heads[i] << std::string(width - heads[i].size() + 2, ' ') << specs_[i].help;
    if (!specs_[i].default_text.empty()) os << " (default: " << specs_[i].default_text << ")";
    os << "\n";
  }
  os << "  " << heads.back() << std::string(width - heads.back().size() + 2, ' ') << "show this help\n";
  return os.str();
}

std::int64_t parse_int(const std::string& flag, const std::string& text, std::int64_t min_value) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || end != text.c_str() + text.size() || errno == ERANGE) {
    throw UsageError(flag + ": expected an integer, got '" + text + "'");
  }
  if (v < min_value) {
    throw UsageError(flag + ": must be >= " + std::to_string(min_value) + ", got " + text);
  }
  return v;
}

float parse_float(const std::string& flag, const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const float v = std::strtof(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || errno == ERANGE || !std::isfinite(v)) {
    throw UsageError(flag + ": expected a finite number, got '" + text + "'");
  }
  return v;
}

std::pair<std::int64_t, std::int64_t> parse_int_pair(const std::string& flag, const std::string& text) {
  const auto comma = text.find(',');
  if (comma == std::string::npos) {
    throw UsageError(flag + ": expected L,R (two integers, -1 = unbounded), got '" + text + "'");
  }
  return {parse_int(flag, text.substr(0, comma), -1), parse_int(flag, text.substr(comma + 1), -1)};
}

std::string parse_choice(const std::string& flag, const std::string& text,
                         const std::vector<std::string>& choices) {
  for (const std::string& c : choices) {
    if (c == text) return text;
  }
  std::string list;
  for (const std::string& c : choices) list += (list.empty() ? "" : ", ") + c;
  throw UsageError(flag + ": expected one of " + list + ", got '" + text + "'");
}

}  // namespace flashsigmoid::cli
