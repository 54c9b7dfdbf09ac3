#pragma once
// Shared option parsing for subcommands: Boost.Program_options with `--help` (options listed with
// defaults) and errors that name the command.
#include <boost/program_options.hpp>

#include <iostream>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/device.h"

namespace csipose::cli {

namespace po = boost::program_options;

/// Parses args into vm. Returns false (after printing usage) when --help was given.
/// `positional` names options that may also be given positionally, in order.
inline bool parse_options(const std::string& command, const std::string& usage, po::options_description& desc,
                          const std::vector<std::string>& args, po::variables_map& vm,
                          const std::vector<std::string>& positional = {}) {
  desc.add_options()("help,h", "show this help");
  // Every command takes --threads unless it has its own (data synth's workers, the benches).
  const bool common_threads = desc.find_nothrow("threads", /*approx=*/false) == nullptr;
  if (common_threads)
    desc.add_options()("threads", po::value<int64_t>(),
                       "CPU threads of LibTorch / OpenMP / oneDNN (0 = all cores; default: all cores, or "
                       "OMP_NUM_THREADS); OpenBLAS keeps one thread unless OPENBLAS_NUM_THREADS is set");
  po::positional_options_description pos;
  for (const auto& p : positional) pos.add(p.c_str(), 1);
  try {
    // No prefix guessing: `--thread 2` must be an error, not silently `--threads 2`.
    const auto style = po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
    po::store(po::command_line_parser(args).options(desc).positional(pos).style(style).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: csipose " << command << " " << usage << "\n\n" << desc << "\n";
      return false;
    }
    po::notify(vm);
    if (common_threads && vm.count("threads")) set_cpu_threads(vm["threads"].as<int64_t>());
  } catch (const po::error& e) {
    fail(command, ": ", e.what(), " (see csipose ", command, " --help)");
  }
  return true;
}

}  // namespace csipose::cli
