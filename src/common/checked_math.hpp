// Checked 64-bit arithmetic for element counts and byte sizes. A product of user-given sizes that
// wraps around becomes a small or negative size, and then a short allocation, an out-of-bounds
// write or a nonsense timing; these throw flashsigmoid::Error naming what was being computed.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "flashsigmoid/flashsigmoid.hpp"

namespace flashsigmoid::detail {

// `what` names the quantity: a string, or a callable that returns one, for callers on every call's
// path (validation runs per call; a decode step is microseconds, so the message is built only when
// it is thrown).
template <class What>
[[noreturn]] void throw_overflow(std::int64_t a, const char* op, std::int64_t b, const What& what) {
  std::string name;
  if constexpr (std::is_invocable_v<const What&>) {
    name = what();
  } else {
    name = what;
  }
  throw Error("flashsigmoid: " + name + " overflows a 64-bit integer (" + std::to_string(a) + op +
              std::to_string(b) + ")");
}

template <class What>
std::int64_t checked_mul(std::int64_t a, std::int64_t b, const What& what) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) throw_overflow(a, " x ", b, what);
  return r;
}

template <class What>
std::int64_t checked_add(std::int64_t a, std::int64_t b, const What& what) {
  std::int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) throw_overflow(a, " + ", b, what);
  return r;
}

// The product of all of `factors`, checked.
template <class What>
std::int64_t checked_product(std::initializer_list<std::int64_t> factors, const What& what) {
  std::int64_t r = 1;
  for (std::int64_t f : factors) r = checked_mul(r, f, what);
  return r;
}

}  // namespace flashsigmoid::detail
