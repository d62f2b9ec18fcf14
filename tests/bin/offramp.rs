fn main() -> std::process::ExitCode {
    offramp::main()
}
