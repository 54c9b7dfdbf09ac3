// csipose: train, quantize and verify WiFi-CSI pose models. Dispatches to one subcommand;
// only this file turns errors into exit codes.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "cli/commands.h"
#include "common/check.h"
#include "common/device.h"
#include "quant/int8_backend.h"
#include "quant/qmodules.h"

using csipose::cli::Args;

static void print_help() {
  std::printf("usage: csipose <command> [options]   (csipose <command> --help for its options)\n\ncommands:\n");
  for (const auto& c : csipose::cli::commands()) std::printf("  %-14s %s\n", c.name, c.summary);
}

int main(int argc, char** argv) {
  // OpenBLAS picks its kernels when it is loaded, before main: if it fell back to generic ones on
  // a CPU it does not know, start again with the right OPENBLAS_CORETYPE (once: the variable is
  // set then). fp32 GEMMs are 2-3x faster for it; results stay within float rounding.
  if (const std::string core = csipose::openblas_core_override(); !core.empty()) {
    setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
    execv("/proc/self/exe", argv);  // returns only on failure: carry on with the slow kernels
  }
  const Args words(argv + 1, argv + argc);
  if (words.empty() || words[0] == "--help" || words[0] == "-h" || words[0] == "help") {
    print_help();
    return words.empty() ? 2 : 0;
  }
  try {
    csipose::configure_allocator();
    csipose::configure_threads();
    // CSIPOSE_INT8_BACKEND=reference|onednn picks who computes the int8 ops' integer sums for any
    // command (the outputs are bit-identical either way; quant/int8_backend.h).
    if (const char* b = std::getenv("CSIPOSE_INT8_BACKEND"); b != nullptr && *b != '\0')
      csipose::set_int8_backend(csipose::parse_int8_backend(b));
    // CSIPOSE_INT8_CHAIN=0 turns int8 chains off (quant/qmodules.h): every int8 op then dequantizes
    // its output and the float functions between ops run in float32, for A/B comparisons.
    if (const char* c = std::getenv("CSIPOSE_INT8_CHAIN"); c != nullptr && std::string(c) == "0")
      csipose::set_int8_chaining(false);
    // Commands are one or two words ("score", "data synth"); the longest match wins.
    for (size_t n : {2u, 1u}) {
      if (words.size() < n) continue;
      std::string name = words[0];
      if (n == 2) name += " " + words[1];
      for (const auto& c : csipose::cli::commands())
        if (name == c.name) return c.run(Args(words.begin() + static_cast<long>(n), words.end()));
    }
    std::string known;
    bool group = false;  // words[0] starts a two-word command ("data"): name both words typed
    for (const auto& c : csipose::cli::commands()) {
      known += std::string(known.empty() ? "" : ", ") + c.name;
      group = group || std::string(c.name).rfind(words[0] + " ", 0) == 0;
    }
    const std::string typed = group && words.size() > 1 ? words[0] + " " + words[1] : words[0];
    std::fprintf(stderr, "error: unknown command \"%s\"; expected one of: %s\n", typed.c_str(), known.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
