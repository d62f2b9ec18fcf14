fn main() -> std::process::ExitCode {
    offramp_link::cli::main()
}
