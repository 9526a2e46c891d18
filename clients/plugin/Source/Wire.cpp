#include "Wire.h"

#include <cstring>
#include <memory>
#include <msgpack.hpp>

namespace wire
{
namespace
{
void packValue (msgpack::packer<msgpack::sbuffer>& pk, const Value& v)
{
    switch (v.kind)
    {
        case Value::Kind::Nil:   pk.pack_nil(); break;
        case Value::Kind::Bool:  if (v.b) pk.pack_true(); else pk.pack_false(); break;
        case Value::Kind::Int:   pk.pack_int64 (v.i); break;
        case Value::Kind::Float: pk.pack_double (v.f); break;
        case Value::Kind::Str:   pk.pack_str ((uint32_t) v.s.size()); pk.pack_str_body (v.s.data(), (uint32_t) v.s.size()); break;
        case Value::Kind::Bin:   pk.pack_bin ((uint32_t) v.bin.size()); pk.pack_bin_body ((const char*) v.bin.data(), (uint32_t) v.bin.size()); break;
        case Value::Kind::Dict:
            pk.pack_map ((uint32_t) v.map->size());
            for (auto& [k, x] : *v.map)
            {
                pk.pack_str ((uint32_t) k.size()); pk.pack_str_body (k.data(), (uint32_t) k.size());
                packValue (pk, x);
            }
            break;
    }
}

void packKey (msgpack::packer<msgpack::sbuffer>& pk, const std::string& k)
{
    pk.pack_str ((uint32_t) k.size());
    pk.pack_str_body (k.data(), (uint32_t) k.size());
}
} // namespace

std::string pack (const std::string& type, const std::string& id, const Map& fields)
{
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> pk (buf);
    pk.pack_map ((uint32_t) (3 + fields.size()));
    packKey (pk, "v"); pk.pack_int (kVersion);
    packKey (pk, "type"); packValue (pk, Value::ofStr (type));
    packKey (pk, "id"); packValue (pk, Value::ofStr (id));
    for (auto& [k, v] : fields)
    {
        packKey (pk, k);
        packValue (pk, v);
    }
    return std::string (buf.data(), buf.size());
}

Reply unpack (const void* bytes, size_t size)
{
    Reply r;
    try
    {
        auto handle = msgpack::unpack ((const char*) bytes, size);
        const msgpack::object& o = handle.get();
        if (o.type != msgpack::type::MAP)
            return r;
        for (uint32_t n = 0; n < o.via.map.size; ++n)
        {
            const auto& kv = o.via.map.ptr[n];
            if (kv.key.type != msgpack::type::STR)
                continue;
            std::string key (kv.key.via.str.ptr, kv.key.via.str.size);
            const auto& val = kv.val;
            switch (val.type)
            {
                case msgpack::type::STR: r.str[key] = std::string (val.via.str.ptr, val.via.str.size); break;
                case msgpack::type::BIN:
                    if (key == "data")
                        r.data.assign ((const uint8_t*) val.via.bin.ptr, (const uint8_t*) val.via.bin.ptr + val.via.bin.size);
                    break;
                case msgpack::type::POSITIVE_INTEGER:
                    r.ints[key] = (int64_t) val.via.u64; r.num[key] = (double) val.via.u64; break;
                case msgpack::type::NEGATIVE_INTEGER:
                    r.ints[key] = val.via.i64; r.num[key] = (double) val.via.i64; break;
                case msgpack::type::FLOAT32:
                case msgpack::type::FLOAT64: r.num[key] = val.via.f64; break;
                case msgpack::type::BOOLEAN: r.flag[key] = val.via.boolean; break;
                case msgpack::type::ARRAY:
                    if (key == "presets")
                        for (uint32_t j = 0; j < val.via.array.size; ++j)
                            if (val.via.array.ptr[j].type == msgpack::type::STR)
                                r.presets.emplace_back (val.via.array.ptr[j].via.str.ptr, val.via.array.ptr[j].via.str.size);
                    break;
                case msgpack::type::MAP:
                    if (key == "details")
                        for (uint32_t j = 0; j < val.via.map.size; ++j)
                        {
                            const auto& d = val.via.map.ptr[j];
                            if (d.key.type == msgpack::type::STR && d.val.type == msgpack::type::STR
                                && std::string (d.key.via.str.ptr, d.key.via.str.size) == "field")
                                r.str["details.field"] = std::string (d.val.via.str.ptr, d.val.via.str.size);
                        }
                    break;
                default: break;
            }
        }
        r.type = r.str.count ("type") ? r.str["type"] : "";
        r.id = r.str.count ("id") ? r.str["id"] : "";
    }
    catch (const std::exception&)
    {
        r = Reply{};
    }
    return r;
}

std::vector<float> decodePcm (const std::vector<uint8_t>& data, const std::string& format)
{
    std::vector<float> out;
    if (format == "s16")
    {
        out.resize (data.size() / 2);
        for (size_t i = 0; i < out.size(); ++i)
        {
            int16_t s = (int16_t) (uint16_t (data[2 * i]) | (uint16_t (data[2 * i + 1]) << 8));
            out[i] = (float) s / 32767.0f;
        }
    }
    else
    {
        out.resize (data.size() / 4);
        for (size_t i = 0; i < out.size(); ++i)
        {
            uint32_t u = uint32_t (data[4 * i]) | (uint32_t (data[4 * i + 1]) << 8)
                       | (uint32_t (data[4 * i + 2]) << 16) | (uint32_t (data[4 * i + 3]) << 24);
            std::memcpy (&out[i], &u, 4);
        }
    }
    return out;
}

std::vector<uint8_t> encodeF32 (const float* samples, size_t count)
{
    std::vector<uint8_t> out (count * 4);
    for (size_t i = 0; i < count; ++i)
    {
        uint32_t u;
        std::memcpy (&u, &samples[i], 4);
        out[4 * i] = uint8_t (u); out[4 * i + 1] = uint8_t (u >> 8);
        out[4 * i + 2] = uint8_t (u >> 16); out[4 * i + 3] = uint8_t (u >> 24);
    }
    return out;
}
} // namespace wire
