fn main() -> std::process::ExitCode {
    medchange::cli::main()
}
