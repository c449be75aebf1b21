//! The proxy-wasm entry (wasm32 only): the SDK's context traits, each a line forwarding to
//! [`Root`] and [`Call`] on the ABI host.

use crate::host::call::Call;
use crate::host::root::Root;
use crate::host::{Abi, HostLogger};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::new(Abi)) });
}}

impl Context for Root<Abi> {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        Root::on_http_call_response(self, token);
    }
}

impl RootContext for Root<Abi> {
    fn on_configure(&mut self, _size: usize) -> bool {
        HostLogger::init();
        Root::on_configure(self)
    }

    fn on_tick(&mut self) {
        Root::on_tick(self);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(self.new_call(context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

// Probes go out from the root context only (the pod's, not a client's), so their answers arrive
// there, never here.
impl Context for Call<Abi> {
    fn on_done(&mut self) -> bool {
        Call::on_done(self);
        true
    }
}

impl HttpContext for Call<Abi> {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.on_request_headers(end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_request_body(body_size, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        self.on_request_trailers()
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.on_response_headers(end_of_stream)
    }
}
