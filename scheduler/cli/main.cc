// rpa: the command-line tool.
//
//   rpa attend CASE_DIR OUT_DIR [--threads N]
//   rpa roofline [--threads N] [--json]
//   rpa bench attention [--threads 1,2] [--repetitions N] [--json] [--filter
//   REGEX] [--no-avx512-decode]
//   rpa bench pipeline [--device tpu7x|none] [--no-host] [--json]
//   rpa tune --target host|v5e|v6e|tpu7x|FILE.json [--out FILE] [--quick]
//
// CLI11 reports usage errors by exception; they are caught here and turned
// into its usual message and exit code. Anything else that throws (out of
// memory) is printed and exits 1.

#include <cstdio>
#include <exception>

#include "commands.h"
#include <CLI/CLI.hpp>

int main(int argc, char** argv) {
  try {
    CLI::App app{"rpa: ragged paged attention on the host CPU", "rpa"};
    app.require_subcommand(1);

    rpa::cli::AttendArgs attend;
    CLI::App* attend_cmd = app.add_subcommand(
        "attend",
        "Run one attention case directory (SPEC section 5): CASE_DIR/*.npy + "
        "params.json -> OUT_DIR/out.npy, OUT_DIR/kv_cache.npy");
    attend_cmd->add_option("CASE_DIR", attend.case_dir, "input case directory")
        ->required();
    attend_cmd
        ->add_option("OUT_DIR", attend.out_dir,
                     "output directory (created if missing)")
        ->required();
    attend_cmd
        ->add_option("--threads", attend.threads,
                     "worker threads (1 = this thread)")
        ->check(CLI::Range(1, 1024));

    rpa::cli::RooflineArgs roofline;
    CLI::App* roofline_cmd = app.add_subcommand(
        "roofline",
        "Measure this machine's memory read bandwidth and FMA peak");
    roofline_cmd->add_option("--threads", roofline.threads, "threads")
        ->check(CLI::Range(1, 1024));
    roofline_cmd->add_flag("--json", roofline.json, "print one JSON object");
    roofline_cmd
        ->add_option("--buffer-mib", roofline.buffer_mib,
                     "bandwidth buffer size in MiB (>> L3)")
        ->check(CLI::Range(1, 1 << 20));

    CLI::App* bench_cmd = app.add_subcommand("bench", "Benchmarks");
    bench_cmd->require_subcommand(1);
    rpa::cli::BenchAttentionArgs bench;
    CLI::App* bench_attention = bench_cmd->add_subcommand(
        "attention",
        "Attention kernels on the named shapes, as % of the roofline");
    bench_attention
        ->add_option("--threads", bench.threads, "thread counts, e.g. 1,2")
        ->delimiter(',')
        ->check(CLI::Range(1, 1024));
    bench_attention->add_option("--repetitions", bench.repetitions, "best of N")
        ->check(CLI::Range(1, 1000));
    bench_attention->add_flag("--json", bench.json,
                              "print only a JSON array of rows on stdout");
    bench_attention->add_option("--filter", bench.filter,
                                "regex: run the rows whose name matches");
    bench_attention->add_flag(
        "!--no-avx512-decode", bench.avx512_decode,
        "run decode on the AVX2 kernel even where AVX-512 is available");
    bench_attention
        ->add_option("--min-time-ms", bench.min_time_ms,
                     "minimum time of one repetition")
        ->check(CLI::Range(0.0, 1e6));
    bench_attention
        ->add_option("--buffer-mib", bench.buffer_mib,
                     "roofline bandwidth buffer size in MiB")
        ->check(CLI::Range(1, 1 << 20));

    rpa::cli::BenchPipelineArgs pipeline;
    CLI::App* bench_pipeline = bench_cmd->add_subcommand(
        "pipeline",
        "Serial vs pipelined schedules on a simulated device and the host: "
        "makespan, busy time per unit, overlap efficiency, MBU, MFU");
    bench_pipeline->add_option("--device", pipeline.device,
                               "device preset or JSON file (none: skip)");
    bench_pipeline->add_flag("--host,!--no-host", pipeline.host,
                             "include the host rows");
    bench_pipeline->add_option("--page-size", pipeline.page_size, "tokens")
        ->check(CLI::Range(1, 4096));
    bench_pipeline
        ->add_option("--repetitions", pipeline.repetitions,
                     "host rows: best of N")
        ->check(CLI::Range(1, 1000));
    bench_pipeline->add_flag("--json", pipeline.json,
                             "print only a JSON array of rows on stdout");
    bench_pipeline->add_option("--filter", pipeline.filter,
                               "run the batches whose name contains this");
    bench_pipeline->add_option(
        "--trace-dir", pipeline.trace_dir,
        "write each device row's Perfetto trace (trace-event JSON) here");

    rpa::cli::TuneArgs tune;
    CLI::App* tune_cmd = app.add_subcommand(
        "tune",
        "Regenerate the kernel selector's tuning table by search (simulated "
        "time for a device, measured time for the host)");
    tune_cmd->add_option("--target", tune.target,
                         "host, v5e, v6e, tpu7x or a "
                         "device JSON file");
    tune_cmd->add_option("--out", tune.out,
                         "write the table here (default: stdout)");
    tune_cmd->add_option("--threads", tune.threads, "host: worker threads")
        ->check(CLI::Range(1, 1024));
    tune_cmd->add_option("--repetitions", tune.repetitions, "host: best of N")
        ->check(CLI::Range(1, 1000));
    tune_cmd->add_flag("--quick", tune.quick,
                       "small shapes, few candidates (smoke test)");

    rpa::cli::DemoArgs demo;
    CLI::App* demo_cmd = rpa::cli::AddDemoCommand(app, &demo);

    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      return app.exit(e);
    }
    if (attend_cmd->parsed()) return rpa::cli::RunAttend(attend);
    if (roofline_cmd->parsed()) return rpa::cli::RunRoofline(roofline);
    if (bench_attention->parsed()) return rpa::cli::RunBenchAttention(bench);
    if (bench_pipeline->parsed()) return rpa::cli::RunBenchPipeline(pipeline);
    if (tune_cmd->parsed()) return rpa::cli::RunTune(tune);
    if (demo_cmd->parsed()) return rpa::cli::RunDemo(demo);
    std::fprintf(stderr, "rpa: no command\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rpa: %s\n", e.what());
    return 1;
  }
}
