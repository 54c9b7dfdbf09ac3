#pragma once
// One function per subcommand; each parses its own options from args (the words after the
// subcommand name) and returns an exit code. Errors are thrown as csipose::Error.
#include <string>
#include <vector>

namespace csipose::cli {

using Args = std::vector<std::string>;

struct Command {
  const char* name;     ///< "data synth"
  const char* summary;  ///< one line for `csipose --help`
  int (*run)(const Args& args);
};

int data_synth(const Args& args);
int data_inspect(const Args& args);
int score(const Args& args);
int baseline(const Args& args);
int models(const Args& args);
int weights(const Args& args);
int predict(const Args& args);
int train(const Args& args);
int evaluate(const Args& args);
int train_bench(const Args& args);
int infer_bench(const Args& args);
int ptq(const Args& args);
int qat(const Args& args);
int convert(const Args& args);
int sweep(const Args& args);
int sweep_report(const Args& args);
int sweep_slurm(const Args& args);
int gate(const Args& args);
int export_run(const Args& args);

/// The table main() dispatches on, in help order.
const std::vector<Command>& commands();

}  // namespace csipose::cli
