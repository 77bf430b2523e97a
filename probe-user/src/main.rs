fn main() -> std::process::ExitCode {
    meshprobe::cli::main()
}
