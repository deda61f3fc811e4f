// Rpath to libtorch and libtorch_cuda kept linked: see seal-build.
fn main() {
    seal_build::link_libtorch();
}
