fn main() -> std::process::ExitCode {
    offramp_edge::cli::main()
}
