//! PDU mapping, pure: an [`OutPart`] as a `submit_sm` (never `message_payload`), a `deliver_sm`
//! read as a delivery receipt or an inbound (MO) part, and the SMPP command statuses named and
//! classified (design note 1.6).

use rusmpp::CommandStatus;
use rusmpp::pdus::{DeliverSm, SubmitSm};
use rusmpp::tlvs::TlvValue;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, Npi, RegisteredDelivery, Ton};

use crate::sms::encoding::Encoding;
use crate::sms::gateway::link::{InboundPart, OutPart};
use crate::sms::reassemble::{Concat, split_udh};
use crate::sms::receipt::{MessageStatus, ReceiptState, parse_text};

/// `esm_class` UDH indicator.
pub const ESM_UDHI: u8 = 0x40;
/// `esm_class` message type bits (SMPP 3.4 5.2.12).
pub const ESM_TYPE_MASK: u8 = 0x3C;
/// SMSC delivery receipt.
pub const ESM_TYPE_RECEIPT: u8 = 0x04;
/// Intermediate delivery notification.
pub const ESM_TYPE_INTERMEDIATE: u8 = 0x20;

/// Why a part cannot become a `submit_sm`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("the {0} address is not valid for SMPP")]
    Address(&'static str),
    #[error("the part is too long for short_message ({0} bytes)")]
    TooLong(usize),
}

/// An address as SMPP wants it: E.164 without `+` (TON 1, NPI 1), or an alphanumeric sender
/// (TON 5, NPI 0, at most 11 characters).
pub fn address(
    addr: &str,
    which: &'static str,
) -> Result<(Ton, Npi, COctetString<1, 21>), PduError> {
    let digits = addr.strip_prefix('+').unwrap_or(addr);
    let (ton, npi) = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if digits.len() > 15 {
            return Err(PduError::Address(which));
        }
        (Ton::International, Npi::Isdn)
    } else if !addr.is_empty() && addr.len() <= 11 && addr.is_ascii() {
        (Ton::Alphanumeric, Npi::Unknown)
    } else {
        return Err(PduError::Address(which));
    };
    let value = if ton == Ton::International {
        digits
    } else {
        addr
    };
    let c = COctetString::from_string(value.to_string()).map_err(|_| PduError::Address(which))?;
    Ok((ton, npi, c))
}

/// The `submit_sm` for a part: data_coding 0 (unpacked GSM septets) or 8 (UTF-16BE), the UDH
/// before the payload with esm_class 0x40 for a multipart message, registered_delivery 1.
pub fn submit_sm(part: &OutPart) -> Result<SubmitSm, PduError> {
    let (s_ton, s_npi, source) = address(&part.from, "source")?;
    let (d_ton, d_npi, dest) = address(&part.to, "destination")?;
    if dest.is_empty() {
        return Err(PduError::Address("destination"));
    }
    let mut sm = Vec::with_capacity(part.payload.len() + 6);
    // Not `EsmClass::default()`: rusmpp 0.4.0's default sets an ANSI-41 bit (0x08).
    let mut esm = EsmClass::from(0u8);
    if let Some(udh) = &part.udh {
        sm.extend_from_slice(udh);
        esm = EsmClass::from(ESM_UDHI);
    }
    sm.extend_from_slice(&part.payload);
    // 140 octets is the air interface's limit (160 septets are sent unpacked: up to 160).
    if sm.len() > 255 {
        return Err(PduError::TooLong(sm.len()));
    }
    let short_message = OctetString::from_slice(&sm).map_err(|_| PduError::TooLong(sm.len()))?;
    let data_coding = match part.encoding {
        Encoding::Gsm7 => DataCoding::McSpecific,
        Encoding::Ucs2 => DataCoding::Ucs2,
    };
    Ok(SubmitSm::builder()
        .source_addr_ton(s_ton)
        .source_addr_npi(s_npi)
        .source_addr(source)
        .dest_addr_ton(d_ton)
        .dest_addr_npi(d_npi)
        .destination_addr(dest)
        .esm_class(esm)
        .registered_delivery(RegisteredDelivery::from(1u8))
        .data_coding(data_coding)
        .short_message(short_message)
        .build())
}

/// What a `deliver_sm` carries.
#[derive(Debug)]
pub enum Delivered {
    Receipt {
        carrier_message_id: String,
        status: MessageStatus,
        error_code: Option<String>,
    },
    Inbound(InboundPart),
    /// A receipt without a usable id or state: answered OK and dropped (an error answer would
    /// make the SMSC send it again forever).
    Unusable,
}

fn text_of(c: &COctetString<1, 21>) -> String {
    String::from_utf8_lossy(c.as_ref())
        .trim_end_matches('\0')
        .to_string()
}

/// Read a `deliver_sm`: a receipt when its message type is 0x04 or 0x20 (id from the
/// `receipted_message_id` TLV, else `id:` in the text; state from `message_state`, else
/// `stat:`; a TLV wins), otherwise an inbound part (UDH when esm_class 0x40, or the SAR TLVs;
/// `message_payload` when `short_message` is empty).
pub fn deliver(d: &DeliverSm) -> Delivered {
    let esm = u8::from(d.esm_class);
    let mut sm: Vec<u8> = d.short_message().as_ref().to_vec();
    let mut tlv_id = None;
    let mut tlv_state = None;
    let mut tlv_err = None;
    let mut payload = None;
    let (mut sar_ref, mut sar_total, mut sar_seq) = (None, None, None);
    for tlv in d.tlvs() {
        match tlv.value() {
            Some(TlvValue::ReceiptedMessageId(id)) => {
                let s = String::from_utf8_lossy(id.as_ref())
                    .trim_end_matches('\0')
                    .trim()
                    .to_string();
                if !s.is_empty() {
                    tlv_id = Some(s);
                }
            }
            Some(TlvValue::MessageState(s)) => tlv_state = ReceiptState::from_tlv(u8::from(*s)),
            Some(TlvValue::NetworkErrorCode(e)) if e.error_code != 0 => {
                tlv_err = Some(format!("{:03}", e.error_code))
            }
            Some(TlvValue::MessagePayload(p)) => payload = Some(p.value.as_ref().to_vec()),
            Some(TlvValue::SarMsgRefNum(r)) => sar_ref = Some(*r),
            Some(TlvValue::SarTotalSegments(t)) => sar_total = Some(*t),
            Some(TlvValue::SarSegmentSeqnum(s)) => sar_seq = Some(*s),
            _ => {}
        }
    }
    if sm.is_empty()
        && let Some(p) = payload
    {
        sm = p;
    }
    let kind = esm & ESM_TYPE_MASK;
    if kind == ESM_TYPE_RECEIPT || kind == ESM_TYPE_INTERMEDIATE {
        let text = String::from_utf8_lossy(&sm);
        let parsed = parse_text(&text).ok();
        let id = tlv_id.or_else(|| parsed.as_ref().map(|r| r.id.clone()));
        let state = tlv_state.or_else(|| parsed.as_ref().map(|r| r.state));
        let err = parsed.as_ref().and_then(|r| r.err.clone()).or(tlv_err);
        return match (id, state) {
            (Some(id), Some(state)) => Delivered::Receipt {
                carrier_message_id: id,
                status: state.status(),
                error_code: err,
            },
            _ => Delivered::Unusable,
        };
    }
    let mut concat = None;
    let mut body = sm.as_slice();
    if esm & ESM_UDHI != 0 {
        if let Some((c, rest)) = split_udh(&sm) {
            concat = c;
            body = rest;
        }
    } else if let (Some(reference), Some(total), Some(index)) = (sar_ref, sar_total, sar_seq)
        && total >= 1
        && index >= 1
        && index <= total
    {
        concat = Some(Concat {
            reference,
            total,
            index,
        });
    }
    let e164 = |ton: Ton, c: &COctetString<1, 21>| {
        let t = text_of(c);
        if ton == Ton::International && !t.starts_with('+') {
            format!("+{t}")
        } else {
            t
        }
    };
    Delivered::Inbound(InboundPart {
        from: e164(d.source_addr_ton, &d.source_addr),
        to: e164(d.dest_addr_ton, &d.destination_addr),
        data_coding: u8::from(d.data_coding),
        payload: body.to_vec(),
        concat,
        carrier_message_id: None,
    })
}

/// What an answer's status means for a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Ok,
    /// ESME_RTHROTTLED, ESME_RMSGQFUL: pause, resend, not an attempt.
    Throttled,
    /// ESME_RSYSERR, ESME_RX_T_APPN: retry with backoff.
    Transient,
    Permanent,
}

pub fn classify(status: CommandStatus) -> StatusClass {
    match status {
        CommandStatus::EsmeRok => StatusClass::Ok,
        CommandStatus::EsmeRthrottled | CommandStatus::EsmeRmsgqful => StatusClass::Throttled,
        CommandStatus::EsmeRsyserr | CommandStatus::EsmeRxTAppn => StatusClass::Transient,
        _ => StatusClass::Permanent,
    }
}

/// The SMPP name of a status (`ESME_RTHROTTLED`), or its hex value when unknown.
pub fn status_name(status: CommandStatus) -> String {
    match status {
        CommandStatus::EsmeRxTAppn => return "ESME_RX_T_APPN".into(),
        CommandStatus::EsmeRxPAppn => return "ESME_RX_P_APPN".into(),
        CommandStatus::EsmeRxRAppn => return "ESME_RX_R_APPN".into(),
        CommandStatus::Other(v) => return format!("0x{v:08X}"),
        _ => {}
    }
    let debug = format!("{status:?}");
    match debug.strip_prefix("Esme") {
        Some(rest) => format!("ESME_{}", rest.to_ascii_uppercase()),
        None => format!("0x{:08X}", u32::from(status)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sms::encoding::to_ucs2;
    use crate::sms::segment::segment;
    use rusmpp::types::AnyOctetString;
    use rusmpp::values::{ErrorCodeNetworkType, MessagePayload, MessageState, NetworkErrorCode};
    use uuid::Uuid;

    fn parts(text: &str) -> Vec<OutPart> {
        let s = segment(text).unwrap();
        (0..s.parts.len())
            .map(|i| OutPart {
                message_id: Uuid::nil(),
                part: (i + 1) as u8,
                total: s.parts.len() as u8,
                from: "+15550001111".into(),
                to: "+447700900123".into(),
                encoding: s.encoding,
                payload: s.parts[i].clone(),
                udh: s.udh(0x2A, i),
                text: text.into(),
                media_urls: vec![],
            })
            .collect()
    }

    #[test]
    fn gsm_three_parts() {
        let text = "abcdefghij".repeat(40); // 400 septets: 153 + 153 + 94
        let ps = parts(&text);
        assert_eq!(ps.len(), 3);
        for (i, p) in ps.iter().enumerate() {
            let sm = submit_sm(p).unwrap();
            assert_eq!(u8::from(sm.esm_class), 0x40);
            assert_eq!(u8::from(sm.data_coding), 0);
            assert_eq!(u8::from(sm.registered_delivery), 1);
            assert_eq!(sm.source_addr.as_str(), "15550001111");
            assert_eq!(sm.destination_addr.as_str(), "447700900123");
            assert_eq!(sm.source_addr_ton, Ton::International);
            assert_eq!(sm.dest_addr_npi, Npi::Isdn);
            let bytes = sm.short_message().as_ref();
            assert_eq!(&bytes[..6], &[5, 0, 3, 0x2A, 3, (i + 1) as u8]);
            assert_eq!(&bytes[6..], p.payload.as_slice());
            assert!(sm.tlvs().is_empty(), "never message_payload");
        }
        assert_eq!(submit_sm(&ps[0]).unwrap().short_message().len(), 6 + 153);
    }

    #[test]
    fn ucs2_two_parts_and_single() {
        let text = "Привет, мир! ".repeat(7); // 91 UCS-2 units: 67 + 24
        let ps = parts(&text);
        assert_eq!(ps.len(), 2);
        let sm = submit_sm(&ps[1]).unwrap();
        assert_eq!(u8::from(sm.data_coding), 8);
        assert_eq!(u8::from(sm.esm_class), 0x40);
        let bytes = sm.short_message().as_ref();
        assert_eq!(&bytes[..6], &[5, 0, 3, 0x2A, 2, 2]);
        let mut joined = submit_sm(&ps[0]).unwrap().short_message().as_ref()[6..].to_vec();
        joined.extend_from_slice(&bytes[6..]);
        assert_eq!(joined, to_ucs2(&text));

        let single = parts("Hello");
        let sm = submit_sm(&single[0]).unwrap();
        assert_eq!(u8::from(sm.esm_class), 0);
        assert_eq!(sm.short_message().as_ref(), b"Hello");
        assert!(sm.tlvs().is_empty());
    }

    #[test]
    fn addresses() {
        assert!(address("+1555", "x").is_ok());
        let (ton, npi, a) = address("Acme", "x").unwrap();
        assert_eq!(
            (ton, npi, a.as_str()),
            (Ton::Alphanumeric, Npi::Unknown, "Acme")
        );
        assert!(address("+1234567890123456", "x").is_err());
        assert!(address("", "x").is_err());
        assert!(address("Much too long sender", "x").is_err());
    }

    fn receipt_pdu(text: &str, tlvs: Vec<TlvValue>) -> DeliverSm {
        let mut d = DeliverSm::builder()
            .esm_class(EsmClass::from(0x04))
            .short_message(OctetString::from_slice(text.as_bytes()).unwrap())
            .build();
        for t in tlvs {
            match t {
                TlvValue::ReceiptedMessageId(v) => {
                    d.push_tlv(rusmpp::tlvs::MessageDeliveryRequestTlvValue::ReceiptedMessageId(v))
                }
                TlvValue::MessageState(v) => d.push_tlv(
                    rusmpp::tlvs::MessageDeliveryRequestTlvValue::MessageState(v),
                ),
                TlvValue::NetworkErrorCode(v) => {
                    d.push_tlv(rusmpp::tlvs::MessageDeliveryRequestTlvValue::NetworkErrorCode(v))
                }
                _ => unreachable!(),
            }
        }
        d
    }

    fn receipt(d: &DeliverSm) -> Option<(String, MessageStatus, Option<String>)> {
        match deliver(d) {
            Delivered::Receipt {
                carrier_message_id,
                status,
                error_code,
            } => Some((carrier_message_id, status, error_code)),
            _ => None,
        }
    }

    #[test]
    fn receipt_tlv_wins_over_text() {
        let text = "id:AB12 sub:001 dlvrd:001 submit date:2612011200 done date:2612011201 stat:DELIVRD err:000 text:";
        // Text only.
        assert_eq!(
            receipt(&receipt_pdu(text, vec![])),
            Some(("AB12".into(), MessageStatus::Delivered, None))
        );
        // TLVs disagree with the text: the TLVs win.
        let d = receipt_pdu(
            text,
            vec![
                TlvValue::ReceiptedMessageId(COctetString::from_string("43794".into()).unwrap()),
                TlvValue::MessageState(MessageState::Undeliverable),
            ],
        );
        assert_eq!(
            receipt(&d),
            Some(("43794".into(), MessageStatus::Failed, None))
        );
        // No text at all: TLVs only, error from network_error_code.
        let d = receipt_pdu(
            "",
            vec![
                TlvValue::ReceiptedMessageId(COctetString::from_string("x-1".into()).unwrap()),
                TlvValue::MessageState(MessageState::Rejected),
                TlvValue::NetworkErrorCode(NetworkErrorCode::new(ErrorCodeNetworkType::Gsm, 34)),
            ],
        );
        assert_eq!(
            receipt(&d),
            Some(("x-1".into(), MessageStatus::Failed, Some("034".into())))
        );
        // UNDELIV err:034 in the text.
        let d = receipt_pdu("id:9 stat:UNDELIV err:034", vec![]);
        assert_eq!(
            receipt(&d),
            Some(("9".into(), MessageStatus::Failed, Some("034".into())))
        );
        // Intermediate (0x20) ENROUTE.
        let mut d = receipt_pdu("id:9 stat:ENROUTE err:000", vec![]);
        d.esm_class = EsmClass::from(0x20);
        assert_eq!(receipt(&d), Some(("9".into(), MessageStatus::Sent, None)));
        assert!(matches!(
            deliver(&receipt_pdu("garbage", vec![])),
            Delivered::Unusable
        ));
    }

    #[test]
    fn inbound_udh_sar_and_payload() {
        let mut sm = vec![5, 0, 3, 7, 2, 2];
        sm.extend_from_slice(b"world");
        let d = DeliverSm::builder()
            .esm_class(EsmClass::from(0x40))
            .source_addr_ton(Ton::International)
            .source_addr(COctetString::from_string("15550001111".into()).unwrap())
            .destination_addr(COctetString::from_string("1555".into()).unwrap())
            .short_message(OctetString::from_slice(&sm).unwrap())
            .build();
        let Delivered::Inbound(p) = deliver(&d) else {
            panic!()
        };
        assert_eq!(p.from, "+15550001111");
        assert_eq!(p.to, "1555");
        assert_eq!(p.payload, b"world");
        assert_eq!(
            p.concat,
            Some(Concat {
                reference: 7,
                total: 2,
                index: 2
            })
        );
        // SAR TLVs, UCS-2, text in message_payload.
        let mut d = DeliverSm::builder()
            .data_coding(DataCoding::Ucs2)
            .short_message(OctetString::empty())
            .build();
        use rusmpp::tlvs::MessageDeliveryRequestTlvValue as V;
        d.push_tlv(V::SarMsgRefNum(300));
        d.push_tlv(V::SarTotalSegments(3));
        d.push_tlv(V::SarSegmentSeqnum(1));
        d.push_tlv(V::MessagePayload(MessagePayload::new(
            AnyOctetString::from_vec(to_ucs2("hé")),
        )));
        let Delivered::Inbound(p) = deliver(&d) else {
            panic!()
        };
        assert_eq!(p.data_coding, 8);
        assert_eq!(p.payload, to_ucs2("hé"));
        assert_eq!(
            p.concat,
            Some(Concat {
                reference: 300,
                total: 3,
                index: 1
            })
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(
            status_name(CommandStatus::EsmeRthrottled),
            "ESME_RTHROTTLED"
        );
        assert_eq!(
            status_name(CommandStatus::EsmeRinvdstadr),
            "ESME_RINVDSTADR"
        );
        assert_eq!(status_name(CommandStatus::EsmeRxTAppn), "ESME_RX_T_APPN");
        assert_eq!(status_name(CommandStatus::Other(0x400)), "0x00000400");
        assert_eq!(classify(CommandStatus::EsmeRok), StatusClass::Ok);
        assert_eq!(
            classify(CommandStatus::EsmeRmsgqful),
            StatusClass::Throttled
        );
        assert_eq!(
            classify(CommandStatus::EsmeRthrottled),
            StatusClass::Throttled
        );
        assert_eq!(classify(CommandStatus::EsmeRsyserr), StatusClass::Transient);
        assert_eq!(classify(CommandStatus::EsmeRxTAppn), StatusClass::Transient);
        for s in [
            CommandStatus::EsmeRinvsrcadr,
            CommandStatus::EsmeRinvdstadr,
            CommandStatus::EsmeRinvmsglen,
            CommandStatus::EsmeRinvesmclass,
            CommandStatus::EsmeRxPAppn,
            CommandStatus::EsmeRxRAppn,
            CommandStatus::EsmeRsubmitfail,
            CommandStatus::Other(0x401),
        ] {
            assert_eq!(classify(s), StatusClass::Permanent);
        }
    }
}
