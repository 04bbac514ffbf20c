//! The DNS responder for the svcnet zone: query bytes in, answer bytes out.
//!
//! Pure and clock-free, so the daemon, the simulator and a fuzzer share it. The wire format is
//! hickory-proto's (no hand parser); what a name means is `addressing::parse_name` plus a lookup
//! the owner supplies (which nodes and services exist). Answers (`docs/protocol.md` §2.7, §6):
//! - a name of the zone that exists: AAAA with its address; other types (A included, as long as
//!   IPv4 service addresses are off) get an empty NOERROR answer with the zone's SOA (NODATA);
//! - a name of the zone that does not exist or is not a svcnet name: NXDOMAIN with the SOA, so
//!   resolvers cache the negative answer for the SOA's minimum TTL;
//! - the zone apex: SOA and NS queries are answered, others get NODATA;
//! - a name outside the zone: [`Outcome::Forward`] when the owner forwards, else REFUSED;
//! - anything that is not one standard query with one question: FORMERR or NOTIMP; bytes that
//!   do not even carry a header: no answer.

use std::net::Ipv6Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{AAAA, NS, SOA};
use hickory_proto::rr::{Name as DnsName, RData, Record, RecordType};

use crate::addressing::{parse_name, Name, NameError, Zone};

/// TTL of positive answers: addresses are derived from names, so they change only when the
/// name stops existing.
pub const ANSWER_TTL: u32 = 60;
/// TTL of the SOA and of negative answers (the SOA minimum).
pub const NEGATIVE_TTL: u32 = 10;
/// Largest query accepted (a DNS message over UDP without EDNS is ≤ 512 bytes; EDNS allows more).
pub const MAX_QUERY: usize = 4096;

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back to the client.
    Reply(Vec<u8>),
    /// The name is outside the zone and the owner forwards such queries: pass the query upstream.
    Forward,
    /// Not a DNS query: send nothing.
    Drop,
}

/// Answers `query` for `zone`. `lookup` returns the address of a svcnet name that exists;
/// `forwarding` says whether names outside the zone are forwarded (else REFUSED).
pub fn answer(
    query: &[u8],
    zone: &Zone,
    forwarding: bool,
    lookup: impl Fn(&Name) -> Option<Ipv6Addr>,
) -> Outcome {
    if query.len() > MAX_QUERY || query.len() < 12 {
        return Outcome::Drop;
    }
    let Ok(request) = Message::from_vec(query) else {
        // Answer FORMERR with the id from the raw header, as RFC 1035 asks.
        let id = u16::from_be_bytes([query[0], query[1]]);
        if query[2] & 0x80 != 0 {
            return Outcome::Drop; // a response, not a query: never answer those
        }
        return encode(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr));
    };
    if request.message_type() != MessageType::Query {
        return Outcome::Drop;
    }
    if request.op_code() != OpCode::Query {
        return encode(Message::error_msg(
            request.id(),
            request.op_code(),
            ResponseCode::NotImp,
        ));
    }
    let [question] = request.queries() else {
        return encode(Message::error_msg(
            request.id(),
            OpCode::Query,
            ResponseCode::FormErr,
        ));
    };
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(forwarding)
        .add_query(question.clone());
    let qname = question.name().to_ascii();
    let qtype = question.query_type();
    let Ok(zone_name) = DnsName::from_ascii(format!("{zone}.")) else {
        return Outcome::Drop;
    };
    match parse_name(zone, &qname) {
        Err(NameError::NotInZone { .. }) => {
            if forwarding {
                return Outcome::Forward;
            }
            response.set_response_code(ResponseCode::Refused);
        }
        Err(NameError::ZoneApex { .. }) => {
            response.set_authoritative(true);
            match qtype {
                RecordType::SOA => {
                    response.add_answer(soa(&zone_name));
                }
                RecordType::NS => {
                    response.add_answer(Record::from_rdata(
                        zone_name.clone(),
                        ANSWER_TTL,
                        RData::NS(NS(ns_name(&zone_name))),
                    ));
                }
                _ => {
                    response.add_name_server(soa(&zone_name));
                }
            }
        }
        Err(_) => {
            response
                .set_authoritative(true)
                .set_response_code(ResponseCode::NXDomain)
                .add_name_server(soa(&zone_name));
        }
        Ok(name) => {
            response.set_authoritative(true);
            match lookup(&name) {
                None => {
                    response
                        .set_response_code(ResponseCode::NXDomain)
                        .add_name_server(soa(&zone_name));
                }
                Some(address) if matches!(qtype, RecordType::AAAA | RecordType::ANY) => {
                    response.add_answer(Record::from_rdata(
                        question.name().clone(),
                        ANSWER_TTL,
                        RData::AAAA(AAAA(address)),
                    ));
                }
                Some(_) => {
                    response.add_name_server(soa(&zone_name));
                }
            }
        }
    }
    encode(response)
}

fn ns_name(zone: &DnsName) -> DnsName {
    DnsName::from_ascii("ns")
        .and_then(|ns| ns.append_domain(zone))
        .unwrap_or_else(|_| zone.clone())
}

fn soa(zone: &DnsName) -> Record {
    let rname = DnsName::from_ascii("hostmaster")
        .and_then(|h| h.append_domain(zone))
        .unwrap_or_else(|_| zone.clone());
    Record::from_rdata(
        zone.clone(),
        NEGATIVE_TTL,
        RData::SOA(SOA::new(
            ns_name(zone),
            rname,
            1,
            3600,
            600,
            86400,
            NEGATIVE_TTL,
        )),
    )
}

fn encode(message: Message) -> Outcome {
    match message.to_vec() {
        Ok(bytes) => Outcome::Reply(bytes),
        Err(_) => Outcome::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addressing::{NodeLabel, ServiceName};
    use hickory_proto::op::Query;

    fn zone() -> Zone {
        Zone::new("svcnet").unwrap()
    }

    fn addr() -> Ipv6Addr {
        "fd12:3456:789a:1::1".parse().unwrap()
    }

    fn lookup(name: &Name) -> Option<Ipv6Addr> {
        match name {
            Name::Service { service, node }
                if *service == ServiceName::parse("web").unwrap()
                    && *node == NodeLabel::parse("alpha").unwrap() =>
            {
                Some(addr())
            }
            Name::Node { node } if *node == NodeLabel::parse("alpha").unwrap() => Some(addr()),
            _ => None,
        }
    }

    fn ask(name: &str, qtype: RecordType, forwarding: bool) -> Outcome {
        let mut q = Message::new();
        q.set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(DnsName::from_ascii(name).unwrap(), qtype));
        answer(&q.to_vec().unwrap(), &zone(), forwarding, lookup)
    }

    fn reply(outcome: Outcome) -> Message {
        match outcome {
            Outcome::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn existing_names_get_aaaa() {
        let m = reply(ask("web.alpha.svcnet.", RecordType::AAAA, false));
        assert_eq!(m.id(), 4242);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative());
        assert_eq!(m.answers().len(), 1);
        assert_eq!(m.answers()[0].data(), &RData::AAAA(AAAA(addr())));
        // Case-insensitive, as DNS is; the answer echoes the question's spelling.
        let m = reply(ask("WEB.Alpha.SVCNET.", RecordType::AAAA, false));
        assert_eq!(m.answers().len(), 1);
        let m = reply(ask("alpha.svcnet.", RecordType::ANY, false));
        assert_eq!(m.answers().len(), 1);
    }

    #[test]
    fn a_queries_of_existing_names_get_nodata_with_soa() {
        let m = reply(ask("web.alpha.svcnet.", RecordType::A, false));
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
        assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn unknown_names_in_the_zone_are_nxdomain() {
        for name in [
            "db.alpha.svcnet.",
            "beta.svcnet.",
            "a.b.c.d.e.svcnet.",
            "bad_label.svcnet.",
        ] {
            let m = reply(ask(name, RecordType::AAAA, false));
            assert_eq!(m.response_code(), ResponseCode::NXDomain, "{name}");
            assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);
        }
    }

    #[test]
    fn other_zones_are_refused_or_forwarded() {
        let m = reply(ask("example.com.", RecordType::A, false));
        assert_eq!(m.response_code(), ResponseCode::Refused);
        assert_eq!(ask("example.com.", RecordType::A, true), Outcome::Forward);
    }

    #[test]
    fn apex_answers_soa_and_ns() {
        let m = reply(ask("svcnet.", RecordType::SOA, false));
        assert_eq!(m.answers()[0].record_type(), RecordType::SOA);
        let m = reply(ask("svcnet.", RecordType::NS, false));
        assert_eq!(m.answers()[0].record_type(), RecordType::NS);
        let m = reply(ask("svcnet.", RecordType::AAAA, false));
        assert!(m.answers().is_empty());
        assert_eq!(m.response_code(), ResponseCode::NoError);
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        assert_eq!(answer(&[1, 2], &zone(), false, lookup), Outcome::Drop);
        // A header claiming one question, then garbage.
        let mut bad = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        bad.extend_from_slice(&[0xff; 5]);
        let m = reply(answer(&bad, &zone(), false, lookup));
        assert_eq!(m.id(), 0x1234);
        assert_eq!(m.response_code(), ResponseCode::FormErr);
        // A response is never answered.
        bad[2] |= 0x80;
        assert_eq!(answer(&bad, &zone(), false, lookup), Outcome::Drop);
        // Two questions: FORMERR.
        let mut q = Message::new();
        q.set_id(7)
            .add_query(Query::query(
                DnsName::from_ascii("a.svcnet.").unwrap(),
                RecordType::A,
            ))
            .add_query(Query::query(
                DnsName::from_ascii("b.svcnet.").unwrap(),
                RecordType::A,
            ));
        let m = reply(answer(&q.to_vec().unwrap(), &zone(), false, lookup));
        assert_eq!(m.response_code(), ResponseCode::FormErr);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = answer(&bytes, &zone(), false, lookup);
            let _ = answer(&bytes, &zone(), true, lookup);
        }
    }
}
