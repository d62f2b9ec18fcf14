fn main() -> std::process::ExitCode {
    offramp_cloud::cli::main()
}
