#pragma once
// Shared option parsing for subcommands: Boost.Program_options with `--help` (options listed with
// defaults) and errors that name the command.
#include <boost/program_options.hpp>

#include <iostream>
#include <string>
#include <vector>

#include "common/check.h"

namespace csipose::cli {

namespace po = boost::program_options;

/// Parses args into vm. Returns false (after printing usage) when --help was given.
/// `positional` names options that may also be given positionally, in order.
inline bool parse_options(const std::string& command, const std::string& usage, po::options_description& desc,
                          const std::vector<std::string>& args, po::variables_map& vm,
                          const std::vector<std::string>& positional = {}) {
  desc.add_options()("help,h", "show this help");
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
  } catch (const po::error& e) {
    fail(command, ": ", e.what(), " (see csipose ", command, " --help)");
  }
  return true;
}

}  // namespace csipose::cli
