// The wire protocol (protocol/PROTOCOL.md) as the plugin speaks it: one msgpack map per ZeroMQ frame.
// Only what the plugin sends and reads; unknown fields and message types are ignored (PROTOCOL.md §1).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace wire
{
constexpr int kVersion = 1;

// A request's fields, packed in insertion order. Values: str, int, float, bool, bin, nested map.
struct Value;
using Map = std::vector<std::pair<std::string, Value>>;

struct Value
{
    enum class Kind { Nil, Bool, Int, Float, Str, Bin, Dict } kind = Kind::Nil;
    bool b = false;
    int64_t i = 0;
    double f = 0.0;
    std::string s;
    std::vector<uint8_t> bin;
    std::shared_ptr<Map> map;

    static Value ofBool (bool v)               { Value x; x.kind = Kind::Bool; x.b = v; return x; }
    static Value ofInt (int64_t v)             { Value x; x.kind = Kind::Int; x.i = v; return x; }
    static Value ofFloat (double v)            { Value x; x.kind = Kind::Float; x.f = v; return x; }
    static Value ofStr (std::string v)         { Value x; x.kind = Kind::Str; x.s = std::move (v); return x; }
    static Value ofBin (std::vector<uint8_t> v){ Value x; x.kind = Kind::Bin; x.bin = std::move (v); return x; }
    static Value ofMap (Map m)                 { Value x; x.kind = Kind::Dict; x.map = std::make_shared<Map> (std::move (m)); return x; }
};

// {"v": 1, "type": type, "id": id, ...fields}
std::string pack (const std::string& type, const std::string& id, const Map& fields);

// A message from the daemon, flattened: scalars by key; `data` (bin) kept as bytes; maps and arrays skipped
// except `details.field`. Nothing here throws: a frame that is not a msgpack map gives type "".
struct Reply
{
    std::string type, id;
    std::map<std::string, std::string> str;
    std::map<std::string, double> num;     // ints and floats
    std::map<std::string, int64_t> ints;   // ints only (seeds keep 64 bits)
    std::map<std::string, bool> flag;
    std::vector<uint8_t> data;
    std::vector<std::string> presets;      // welcome.presets
};

Reply unpack (const void* bytes, size_t size);

// f32 or s16 little-endian PCM to floats.
std::vector<float> decodePcm (const std::vector<uint8_t>& data, const std::string& format);
std::vector<uint8_t> encodeF32 (const float* samples, size_t count);
} // namespace wire
