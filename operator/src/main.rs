//! tmp
fn main() {
    print!("{}", zmq_proxy_operator::crd::crd_yaml().unwrap());
}
