//! The `.vm` zone and the server answering it, apart from the daemon: a
//! [`VmZone`] answers from a [`Names`] lookup, [`serve`] runs it on bound
//! sockets until the returned [`Running`] is dropped.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::sockets;

/// TTL of A records: short, since an address changes when a VM restarts.
pub const RECORD_TTL: u32 = 5;
/// How long an idle TCP client may hold a connection.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the zone knows about one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A VM by that name, with its address while it holds one.
    Vm(Option<Ipv4Addr>),
    /// No such VM.
    Missing,
}

/// The source of the zone's data: VM name (a DNS label, lower case) → entry.
pub trait Names: Send + Sync + 'static {
    /// Look up VM `name`.
    fn lookup(&self, name: &str) -> Entry;
}

impl<F: Fn(&str) -> Entry + Send + Sync + 'static> Names for F {
    fn lookup(&self, name: &str) -> Entry {
        self(name)
    }
}

/// Errors running the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot use the DNS socket for {address}: {source}")]
    Socket {
        address: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sockets(#[from] sockets::SocketsError),
}

/// The `.vm` zone as a hickory request handler.
pub struct VmZone {
    names: Arc<dyn Names>,
    origin: Name,
    soa: Record,
}

impl std::fmt::Debug for VmZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmZone")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// How one query is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Authoritative answer with these addresses (empty: NODATA).
    Answer(Vec<Ipv4Addr>),
    /// Authoritative NXDOMAIN.
    NxDomain,
    /// Not ours.
    Refused,
}

impl VmZone {
    /// The zone `vm.` answered from `names`.
    pub fn new(names: Arc<dyn Names>) -> VmZone {
        let origin = Name::from_ascii("vm.").unwrap_or_default();
        let host = Name::from_ascii("ns.vm.").unwrap_or_default();
        let mail = Name::from_ascii("hostmaster.vm.").unwrap_or_default();
        let soa = Record::from_rdata(
            origin.clone(),
            RECORD_TTL,
            RData::SOA(SOA::new(host, mail, 1, 60, 60, 600, RECORD_TTL)),
        );
        VmZone { names, origin, soa }
    }

    /// The answer for `name` (`sandbox.vm.`, any case) and `rtype`, class IN.
    pub fn decide(&self, name: &str, rtype: RecordType, class: DNSClass) -> Verdict {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let Some(label) = name
            .strip_suffix(".vm")
            .or(if name == "vm" { Some("") } else { None })
        else {
            return Verdict::Refused;
        };
        if class != DNSClass::IN {
            return Verdict::Refused;
        }
        if label.is_empty() {
            // The apex exists (it has the SOA) but holds no addresses.
            return Verdict::Answer(Vec::new());
        }
        if label.contains('.') {
            return Verdict::NxDomain;
        }
        match self.names.lookup(label) {
            Entry::Missing => Verdict::NxDomain,
            Entry::Vm(ip) => Verdict::Answer(match (rtype, ip) {
                (RecordType::A | RecordType::ANY, Some(ip)) => vec![ip],
                _ => Vec::new(),
            }),
        }
    }

    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut handle: R,
    ) -> Result<ResponseInfo, String> {
        let mut meta = Metadata::response_from_request(&request.metadata);
        let builder = MessageResponseBuilder::new(&request.queries, None);
        if request.metadata.message_type != MessageType::Query {
            return Err("a response sent as a query".into());
        }
        if points_into_header(request.queries.as_bytes()) {
            // Every response echoes the question's bytes as they came, and
            // the header they point at differs in the response: the echo
            // would be a malformed message. Such a question is malformed
            // anyway (a name pointer must reach an earlier name).
            return Err("a question name points into the header".into());
        }
        if request.metadata.op_code != OpCode::Query {
            let response = builder.error_msg(&request.metadata, ResponseCode::NotImp);
            return handle
                .send_response(response)
                .await
                .map_err(|e| e.to_string());
        }
        let [query] = request.queries.queries() else {
            let response = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return handle
                .send_response(response)
                .await
                .map_err(|e| e.to_string());
        };
        let qname: &LowerName = query.name();
        let verdict = self.decide(&qname.to_string(), query.query_type(), query.query_class());
        let answers: Vec<Record> = match &verdict {
            Verdict::Refused => {
                let response = builder.error_msg(&request.metadata, ResponseCode::Refused);
                return handle
                    .send_response(response)
                    .await
                    .map_err(|e| e.to_string());
            }
            Verdict::NxDomain => {
                meta.response_code = ResponseCode::NXDomain;
                Vec::new()
            }
            Verdict::Answer(ips) => ips
                .iter()
                .map(|ip| {
                    Record::from_rdata(Name::from(qname.clone()), RECORD_TTL, RData::A(A(*ip)))
                })
                .collect(),
        };
        meta.authoritative = true;
        let soa: Vec<&Record> = if answers.is_empty() {
            vec![&self.soa]
        } else {
            Vec::new()
        };
        let response = builder.build(meta, answers.iter(), soa, None, None);
        handle
            .send_response(response)
            .await
            .map_err(|e| e.to_string())
    }

    /// The zone's origin, `vm.`.
    pub fn origin(&self) -> &Name {
        &self.origin
    }
}

/// Whether a question section (as received, starting at message offset 12)
/// holds a compression pointer to an offset inside the 12-byte header.
fn points_into_header(raw: &[u8]) -> bool {
    const HEADER: usize = 12;
    let mut i = 0;
    while i < raw.len() {
        // One name, then type and class.
        loop {
            let Some(&b) = raw.get(i) else { return false };
            if b & 0xc0 == 0xc0 {
                let Some(&lo) = raw.get(i + 1) else {
                    return false;
                };
                if ((usize::from(b & 0x3f) << 8) | usize::from(lo)) < HEADER {
                    return true;
                }
                i += 2;
                break;
            }
            i += 1;
            if b == 0 {
                break;
            }
            i += usize::from(b);
        }
        i += 4;
    }
    false
}

#[async_trait::async_trait]
impl RequestHandler for VmZone {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        match self.respond(request, response_handle).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(src = %request.src(), "DNS request not answered: {e}");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// A running DNS server; stops when dropped.
#[derive(Debug)]
pub struct Running {
    // Aborting drops the server, whose task set aborts the UDP and TCP tasks.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve `zone` on `udp` and `tcp` (bound sockets, any port) until the
/// returned handle is dropped. Needs a tokio runtime.
pub fn serve(
    zone: VmZone,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
) -> Result<Running, DnsError> {
    let address = udp.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let err = |source| DnsError::Socket {
        address: address.clone(),
        source,
    };
    udp.set_nonblocking(true).map_err(err)?;
    tcp.set_nonblocking(true).map_err(err)?;
    let udp = tokio::net::UdpSocket::from_std(udp).map_err(err)?;
    let tcp = tokio::net::TcpListener::from_std(tcp).map_err(err)?;
    let mut server = hickory_server::Server::new(zone);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_TIMEOUT, 4096);
    let task = tokio::spawn(async move {
        if let Err(e) = server.block_until_done().await {
            tracing::warn!("the .vm DNS server stopped: {e}");
        }
    });
    Ok(Running { task })
}

#[cfg(test)]
mod tests {
    #[test]
    fn question_pointers_into_the_header_are_found() {
        // sandbox.vm. A IN, then the same name as a pointer to offset 12.
        let plain = b"\x07sandbox\x02vm\x00\x00\x01\x00\x01";
        assert!(!super::points_into_header(plain));
        let mut two = plain.to_vec();
        two.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01");
        assert!(!super::points_into_header(&two));
        assert!(super::points_into_header(b"\xc0\x00\x00\x01\x7f\x9a"));
        assert!(super::points_into_header(b"\x01a\xc0\x05\x00\x01\x00\x01"));
    }

    use super::*;

    fn zone() -> VmZone {
        VmZone::new(Arc::new(|name: &str| match name {
            "web" => Entry::Vm(Some(Ipv4Addr::new(172, 16, 0, 2))),
            "off" => Entry::Vm(None),
            _ => Entry::Missing,
        }))
    }

    #[test]
    fn names_in_the_zone_and_outside_it() {
        let z = zone();
        let ip = Ipv4Addr::new(172, 16, 0, 2);
        assert_eq!(
            z.decide("web.vm.", RecordType::A, DNSClass::IN),
            Verdict::Answer(vec![ip])
        );
        assert_eq!(
            z.decide("WEB.VM", RecordType::A, DNSClass::IN),
            Verdict::Answer(vec![ip])
        );
        assert_eq!(
            z.decide("web.vm.", RecordType::AAAA, DNSClass::IN),
            Verdict::Answer(vec![])
        );
        assert_eq!(
            z.decide("off.vm.", RecordType::A, DNSClass::IN),
            Verdict::Answer(vec![])
        );
        assert_eq!(
            z.decide("nope.vm.", RecordType::A, DNSClass::IN),
            Verdict::NxDomain
        );
        assert_eq!(
            z.decide("a.web.vm.", RecordType::A, DNSClass::IN),
            Verdict::NxDomain
        );
        assert_eq!(
            z.decide("vm.", RecordType::SOA, DNSClass::IN),
            Verdict::Answer(vec![])
        );
        assert_eq!(
            z.decide("example.com.", RecordType::A, DNSClass::IN),
            Verdict::Refused
        );
        assert_eq!(
            z.decide("xvm.", RecordType::A, DNSClass::IN),
            Verdict::Refused
        );
        assert_eq!(
            z.decide(".", RecordType::NS, DNSClass::IN),
            Verdict::Refused
        );
        assert_eq!(
            z.decide("web.vm.", RecordType::A, DNSClass::CH),
            Verdict::Refused
        );
    }
}
