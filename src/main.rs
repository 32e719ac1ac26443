//! The `commhub` binary: see `commhub --help`.

fn main() -> std::process::ExitCode {
    commhub::cli::main()
}
