fn main() {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::ROUTER).expect("socket");
    println!("{:?} {}", zmq::version(), s.get_identity().is_ok());
}
