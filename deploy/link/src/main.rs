//! `offramp-link`: the link emulator alone, for the compose `link` container
//! (the same command as `offramp link`, without the model code).

fn main() -> std::process::ExitCode {
    offramp_link::cli::main()
}
