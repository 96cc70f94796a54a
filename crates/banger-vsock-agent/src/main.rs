fn main() {
    println!("{}", banger_wire::VERSION);
}
