// segrank's own minimal C++ unit-test harness: TEST_CASE, SUBCASE, CHECK/REQUIRE (+ THROWS_AS, NOTHROW), Approx.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <iomanip>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace segrank_test {

// ---- failure messages show the compared values where they can be printed
template <class T, class = void> struct printable : std::false_type {};
template <class T>
struct printable<T, std::void_t<decltype(std::declval<std::ostream&>() << std::declval<const T&>())>> : std::true_type {};
template <class T> struct is_vector : std::false_type {};
template <class T, class A> struct is_vector<std::vector<T, A>> : std::true_type {};

template <class T>
void print(std::ostream& os, const T& v) {
  if constexpr (std::is_same_v<T, bool>) os << (v ? "true" : "false");
  else if constexpr (std::is_convertible_v<const T&, std::string_view>) os << '"' << std::string_view(v) << '"';
  else if constexpr (printable<T>::value) os << v;
  else if constexpr (is_vector<T>::value) {
    os << '{';
    for (std::size_t i = 0; i < v.size(); ++i) print(os << (i ? ", " : ""), v[i]);
    os << '}';
  } else os << "{?}";
}
template <class T>
std::string show(const T& v) {
  std::ostringstream os;
  print(os << std::setprecision(std::numeric_limits<double>::max_digits10), v);
  return os.str();
}

// ---- Approx: |x - value| < epsilon * (1 + max(|x|, |value|)); the default epsilon is 100 float ulps at 1
class Approx {
 public:
  explicit Approx(double value) : value_(value) {}
  Approx& epsilon(double e) { epsilon_ = e; return *this; }
  friend bool operator==(double x, const Approx& a) {
    return std::fabs(x - a.value_) < a.epsilon_ * (1.0 + std::max(std::fabs(x), std::fabs(a.value_)));
  }
  friend std::ostream& operator<<(std::ostream& os, const Approx& a) {
    return os << "Approx(" << a.value_ << ", epsilon " << a.epsilon_ << ")";
  }

 private:
  double value_, epsilon_ = static_cast<double>(std::numeric_limits<float>::epsilon()) * 100;
};

// ---- expression capture: Decomposer() << a == b  parses as  (Decomposer() << a) == b
struct Result { bool ok = false; std::string expansion; };  // the expansion is filled in on failure only
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"  // CHECK(unsigned_count == 2) is meant as written
template <class L>
struct Lhs {
  const L& lhs;
  template <class R>
  Result done(bool ok, const R& rhs, const char* op) const {
    return ok ? Result{true, {}} : Result{false, show(lhs) + op + show(rhs)};
  }
  template <class R> Result operator==(const R& r) const { return done(static_cast<bool>(lhs == r), r, " == "); }
  template <class R> Result operator!=(const R& r) const { return done(static_cast<bool>(lhs != r), r, " != "); }
  template <class R> Result operator<(const R& r) const { return done(static_cast<bool>(lhs < r), r, " < "); }
  operator Result() const { return lhs ? Result{true, {}} : Result{false, show(lhs)}; }  // CHECK(x.empty())
};
#pragma GCC diagnostic pop
struct Decomposer {
  template <class L> Lhs<L> operator<<(const L& lhs) const { return {lhs}; }
};

// ---- registry and run state
struct TestCase { const char *name, *file; int line; void (*body)(); };
inline std::vector<TestCase>& registry() { static std::vector<TestCase> cases; return cases; }
struct Registrar {
  Registrar(const char* name, const char* file, int line, void (*body)()) { registry().push_back({name, file, line, body}); }
};
struct RequireFailed {};  // thrown by a failing REQUIRE to leave the test case

struct State {
  long assertions = 0, failures = 0;
  const TestCase* current = nullptr;
  // SUBCASE bookkeeping: the body runs once per leaf subcase; target[d] is the subcase to enter at nesting
  // depth d in this pass, seen[d] how many subcases were met at depth d in this pass.
  std::vector<int> target, seen;
  std::vector<const char*> names, aborted;  // the subcase path now, and the one an exception left (if any)
};
inline State& state() { static State s; return s; }

inline void record(bool ok, const char* file, int line, const char* macro, const char* expr, const std::string& detail,
                   bool fatal = false) {
  State& s = state();
  ++s.assertions;
  if (ok) return;
  ++s.failures;
  std::printf("%s:%d: FAILED: %s( %s )\n", file, line, macro, expr);
  if (!detail.empty()) std::printf("  with: %s\n", detail.c_str());
  std::printf("  in test case \"%s\"", s.current ? s.current->name : "?");
  for (const char* n : s.names) std::printf(" / subcase \"%s\"", n);
  std::printf("\n");
  std::fflush(stdout);
  if (fatal) throw RequireFailed{};
}
inline std::string describe_exception() {  // call inside a catch block only
  try { throw; } catch (const std::exception& e) { return std::string("exception: ") + e.what(); } catch (...) {}
  return "exception of an unknown type";
}
// The assertion macros hand their expression over as a lambda, so that one that throws is reported too.
template <class F>
void check(F&& expr, const char* file, int line, const char* macro, const char* text, bool fatal) {
  Result r;
  try { r = expr(); } catch (...) { r.expansion = describe_exception(); }
  record(r.ok, file, line, macro, text, r.expansion, fatal);
}
template <class E, class F>  // E = void: CHECK_NOTHROW
void check_throws(F&& expr, const char* file, int line, const char* macro, const char* text) {
  std::string detail = std::is_void_v<E> ? "" : "no exception thrown";
  try {
    expr();
  } catch (const std::conditional_t<std::is_void_v<E>, RequireFailed, E>&) {
    if constexpr (std::is_void_v<E>) throw;  // a REQUIRE inside the expression
    detail.clear();
  } catch (...) {
    detail = (std::is_void_v<E> ? "" : "another ") + describe_exception();
  }
  record(detail.empty(), file, line, macro, text, detail);
}

struct Subcase {
  bool entered = false;
  explicit Subcase(const char* name) {
    State& s = state();
    const std::size_t d = s.names.size();
    if (s.seen.size() <= d) s.seen.resize(d + 1, 0);
    const int index = s.seen[d]++;
    if (s.target.size() == d) s.target.push_back(index);  // first subcase met at this depth: enter it
    if ((entered = s.target[d] == index)) s.names.push_back(name);
  }
  ~Subcase() {
    State& s = state();
    if (entered && std::uncaught_exceptions() > 0 && s.aborted.empty()) s.aborted = s.names;
    if (entered) s.names.pop_back();
  }
};

inline void run_case(const TestCase& tc) {
  State& s = state();
  s.current = &tc;
  s.target.clear();
  do {
    s.seen.clear();
    s.names.clear();
    s.aborted.clear();
    try {
      tc.body();
    } catch (const RequireFailed&) {
    } catch (...) {
      s.names = s.aborted;
      record(false, tc.file, tc.line, "TEST_CASE", tc.name, "unexpected " + describe_exception());
    }
    if (!s.aborted.empty()) {  // the later siblings of the subcase left were never met: try the next index
      s.target.resize(s.aborted.size());
      ++s.target.back();
      continue;
    }
    while (!s.target.empty()) {  // next leaf: the deepest level with a sibling after the one just run
      const std::size_t d = s.target.size() - 1;
      if (d < s.seen.size() && s.target[d] + 1 < s.seen[d]) break;
      s.target.pop_back();
    }
    if (!s.target.empty()) ++s.target.back();
  } while (!s.target.empty());
  s.current = nullptr;
}

// Runs every test case, or only those whose name contains one of the arguments.
inline int run(int argc, char** argv) {
  const std::vector<std::string_view> filters(argv + 1, argv + argc);
  State& s = state();
  long ran = 0, failed_cases = 0;
  for (const TestCase& tc : registry()) {
    const auto in_name = [&](std::string_view f) { return std::string_view(tc.name).find(f) != std::string_view::npos; };
    if (!filters.empty() && std::none_of(filters.begin(), filters.end(), in_name)) continue;
    ++ran;
    const long before = s.failures;
    run_case(tc);
    if (s.failures != before) ++failed_cases;
  }
  const bool ok = ran > 0 && s.failures == 0;
  std::printf("test cases: %ld (%ld failed) | assertions: %ld | failures: %ld\n%s%s\n", ran, failed_cases, s.assertions,
              s.failures, ran == 0 ? "no test case ran: " : "", ok ? "SUCCESS" : "FAILURE");
  return ok ? 0 : 1;
}

}  // namespace segrank_test

#define SEGRANK_TEST_CAT2(a, b) a##b
#define SEGRANK_TEST_CAT(a, b) SEGRANK_TEST_CAT2(a, b)
#define SEGRANK_TEST_CASE(name, fn)                                                                   \
  static void fn();                                                                                   \
  static const segrank_test::Registrar SEGRANK_TEST_CAT(fn, _registrar){name, __FILE__, __LINE__, fn}; \
  static void fn()
#define TEST_CASE(name) SEGRANK_TEST_CASE(name, SEGRANK_TEST_CAT(segrank_test_case_, __COUNTER__))

// Each SUBCASE runs once, in its own pass through the test case body (code outside it runs in every pass).
#define SUBCASE(name) \
  if (const segrank_test::Subcase SEGRANK_TEST_CAT(subcase_, __LINE__){name}; SEGRANK_TEST_CAT(subcase_, __LINE__).entered)

#define SEGRANK_TEST_ASSERT(macro, fatal, ...)                                                                       \
  segrank_test::check([&]() -> segrank_test::Result { return segrank_test::Decomposer() << __VA_ARGS__; }, __FILE__, \
                      __LINE__, macro, #__VA_ARGS__, fatal)
#define CHECK(...) SEGRANK_TEST_ASSERT("CHECK", false, __VA_ARGS__)
#define REQUIRE(...) SEGRANK_TEST_ASSERT("REQUIRE", true, __VA_ARGS__)
#define CHECK_THROWS_AS(expr, ...)                                                                        \
  segrank_test::check_throws<__VA_ARGS__>([&] { static_cast<void>(expr); }, __FILE__, __LINE__, "CHECK_THROWS_AS", \
                                          #expr ", " #__VA_ARGS__)
#define CHECK_NOTHROW(...)                                                                                  \
  segrank_test::check_throws<void>([&] { static_cast<void>(__VA_ARGS__); }, __FILE__, __LINE__, "CHECK_NOTHROW", \
                                   #__VA_ARGS__)
