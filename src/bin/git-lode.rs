fn main() {
    std::process::exit(lode::cli::main())
}
