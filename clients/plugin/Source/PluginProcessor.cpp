#include "PluginProcessor.h"
#include "PluginEditor.h"

#include <cmath>

// Real-time check hooks: tests/test_plugin.py preloads an interposer (rtcheck/rtcheck.c) that defines them and
// flags every allocation, free or lock taken between enter and leave. Without it they are null and cost a branch.
#if defined(__GNUC__) && ! defined(_WIN32) && ! defined(__APPLE__)
extern "C" {
__attribute__ ((weak)) void magnet_rtcheck_enter (void);
__attribute__ ((weak)) void magnet_rtcheck_leave (void);
}
struct RtScope
{
    RtScope() noexcept { if (magnet_rtcheck_enter) magnet_rtcheck_enter(); }
    ~RtScope() { if (magnet_rtcheck_leave) magnet_rtcheck_leave(); }
};
#else
struct RtScope {};
#endif

MagnetProcessor::MagnetProcessor()
    : AudioProcessor (BusesProperties().withOutput ("Output", juce::AudioChannelSet::stereo(), true))
{
    if (auto env = juce::SystemStats::getEnvironmentVariable ("MAGNET_RT_ENDPOINT", {}); env.isNotEmpty())
        settings.address = env;
    const char* ids[] = { "generate", "variations", "loop", "inpaint", "cancel" };
    const char* names[] = { "Generate", "Variations", "Make loop", "Inpaint bars", "Cancel" };
    for (size_t k = 0; k < buttons.size(); ++k)
    {
        buttons[k] = new juce::AudioParameterBool (juce::ParameterID { ids[k], 1 }, names[k], false);
        addParameter (buttons[k]);
    }
    worker = std::make_unique<DaemonWorker> (settings, report, takes, host, playRequest, noteGenerate, buttonPresses);
}

// A host's press of a button parameter (automation, a MIDI-learned pad): the value rose since the last block.
void MagnetProcessor::pollButtons() noexcept
{
    uint32_t pressed = 0;
    for (size_t k = 0; k < buttons.size(); ++k)
    {
        const bool down = buttons[k]->get();
        if (down && ! buttonDown[k])
            pressed |= 1u << k;
        buttonDown[k] = down;
    }
    if (pressed != 0)
        buttonPresses.fetch_or (pressed);
}

MagnetProcessor::~MagnetProcessor()
{
    worker.reset();  // joins the daemon thread before the takes go
}

bool MagnetProcessor::isBusesLayoutSupported (const BusesLayout& layouts) const
{
    const auto& out = layouts.getMainOutputChannelSet();
    return out == juce::AudioChannelSet::stereo() || out == juce::AudioChannelSet::mono();
}

void MagnetProcessor::prepareToPlay (double sampleRate, int)
{
    // Not the audio thread: a render starts from silence (nothing playing, nothing pending).
    rate = sampleRate;
    host.sampleRate.store (sampleRate);
    slot = -1;
    pendingSlot = -1;
    pendingIn = -1;
    pos = 0;
    playingSlot = -1;
    playRequest.store (-1);
    stopRequest.store (false);
}

// Schedule `s` to start at the first bar line at or after sample `offset` of this block when the transport runs
// (at `offset` itself when it does not, or the host gives no musical position). A trigger at most
// kLateGraceBeats after a bar line counts as on it: the take starts at once, at the position it has from the line.
void MagnetProcessor::trigger (int s, int offset, const juce::Optional<juce::AudioPlayHead::PositionInfo>& p)
{
    const double bpm = host.bpm.load();
    const int num = host.numerator.load(), den = host.denominator.load();
    const double samplesPerQuarter = rate * 60.0 / bpm;
    const double barQ = num * 4.0 / den;
    pendingSlot = s;
    pendingLoopLen = (int64_t) std::llround (settings.bars.load() * barQ * samplesPerQuarter);
    pendingIn = offset;
    pendingPos = 0;
    if (p.hasValue() && p->getIsPlaying())
        if (auto ppq = p->getPpqPosition(); ppq.hasValue())
        {
            const double at = *ppq + offset / samplesPerQuarter;
            const double origin = p->getPpqPositionOfLastBarStart().orFallback (0.0);
            const double lastBar = origin + std::floor ((at - origin) / barQ + 1e-9) * barQ;
            if (const double late = at - lastBar; late * samplesPerQuarter >= 0.5 && late <= kLateGraceBeats)
            {
                // A note meant for the bar line that came a little late (DawDreamer delivers a note placed on
                // the line a few samples after it): the take starts at the note, where it would be from the line.
                pendingPos = std::llround (late * samplesPerQuarter);
                return;
            }
            const double bars = std::ceil ((at - origin) / barQ - 1e-6);
            const double nextBar = origin + bars * barQ;
            pendingIn = std::max<int64_t> (offset, (int64_t) std::llround ((nextBar - *ppq) * samplesPerQuarter));
        }
}

void MagnetProcessor::processBlock (juce::AudioBuffer<float>& buffer, juce::MidiBuffer& midi)
{
    RtScope rt;
    juce::ScopedNoDenormals noDenormals;
    const int n = buffer.getNumSamples();
    buffer.clear();

    juce::Optional<juce::AudioPlayHead::PositionInfo> p;
    if (auto* ph = getPlayHead())
        p = ph->getPosition();
    if (p.hasValue())
    {
        if (auto bpm = p->getBpm(); bpm.hasValue() && *bpm > 0)
            host.bpm.store (*bpm);
        if (auto ts = p->getTimeSignature(); ts.hasValue() && ts->numerator > 0 && ts->denominator > 0)
        {
            host.numerator.store (ts->numerator);
            host.denominator.store (ts->denominator);
        }
    }

    pollButtons();
    if (stopRequest.exchange (false))
    {
        slot = -1;
        pendingSlot = -1;
    }
    if (int s = playRequest.exchange (-1); s >= 0 && s < kSlots)
        trigger (s, 0, p);
    for (const auto meta : midi)
    {
        const auto m = meta.getMessage();
        if (! m.isNoteOn())
            continue;  // velocity-independent; note-offs do not stop a take
        const int s = m.getNoteNumber() - kFirstNote;
        if (s < 0 || s >= kSlots)
            continue;
        if (takes.filled (s))
            trigger (s, meta.samplePosition, p);
        else
            noteGenerate.fetch_or (1u << s);  // the daemon thread starts a take; it plays from the bar line after it arrives
    }
    midi.clear();

    float* l = buffer.getWritePointer (0);
    float* r = buffer.getNumChannels() > 1 ? buffer.getWritePointer (1) : nullptr;
    int i = 0;
    while (i < n)
    {
        int end = n;
        if (pendingSlot >= 0 && pendingIn >= i && pendingIn < n)
            end = (int) pendingIn;
        if (slot >= 0 && end > i)
        {
            if (const Take* t = takes.acquire (slot))
            {
                const int64_t len = (int64_t) t->left.size();
                const bool loop = settings.loop.load();
                for (int k = i; k < end; ++k)
                {
                    if (loop && loopLen > 0 && pos >= loopLen)
                        pos = 0;
                    if (pos < len && (! loop || pos < loopLen))
                    {
                        l[k] = t->left[(size_t) pos];
                        if (r != nullptr)
                            r[k] = t->right[(size_t) pos];
                    }
                    ++pos;
                }
            }
            takes.release();
        }
        i = end;
        if (pendingSlot >= 0 && pendingIn == i && i < n)
        {
            slot = pendingSlot;
            loopLen = pendingLoopLen;
            pos = pendingPos;
            pendingSlot = -1;
            playingSlot.store (slot);
        }
    }
    if (pendingSlot >= 0)
        pendingIn -= n;
}

juce::AudioProcessorEditor* MagnetProcessor::createEditor() { return new MagnetEditor (*this); }

void MagnetProcessor::getStateInformation (juce::MemoryBlock& dest)
{
    juce::XmlElement x ("MAGNETRT");
    {
        std::lock_guard<std::mutex> g (settings.lock);
        x.setAttribute ("prompt", settings.prompt);
        x.setAttribute ("preset", settings.preset);
        x.setAttribute ("seed", juce::String ((juce::int64) settings.seed));
        x.setAttribute ("variations", settings.variations);
        x.setAttribute ("inpaintStartBar", settings.inpaintStartBar);
        x.setAttribute ("inpaintEndBar", settings.inpaintEndBar);
        x.setAttribute ("address", settings.address);
        x.setAttribute ("takeDir", settings.takeDir);
        x.setAttribute ("slot", settings.selectedSlot);
    }
    x.setAttribute ("bars", settings.bars.load());
    x.setAttribute ("loop", settings.loop.load());
    {
        std::lock_guard<std::mutex> g (report.lock);
        for (int k = 0; k < kSlots; ++k)
            if (! report.paths[(size_t) k].empty())
            {
                auto* t = x.createNewChildElement ("TAKE");
                t->setAttribute ("slot", k);
                t->setAttribute ("path", juce::String (report.paths[(size_t) k]));
                t->setAttribute ("seed", juce::String ((juce::int64) report.seeds[(size_t) k]));
            }
    }
    copyXmlToBinary (x, dest);
}

void MagnetProcessor::setStateInformation (const void* data, int size)
{
    auto x = getXmlFromBinary (data, size);
    if (x == nullptr || ! x->hasTagName ("MAGNETRT"))
        return;
    juce::String oldAddress, newAddress;
    {
        std::lock_guard<std::mutex> g (settings.lock);
        oldAddress = settings.address;
        settings.prompt = x->getStringAttribute ("prompt", settings.prompt);
        settings.preset = x->getStringAttribute ("preset", settings.preset);
        settings.seed = x->getStringAttribute ("seed", "-1").getLargeIntValue();
        settings.variations = juce::jlimit (1, 8, x->getIntAttribute ("variations", settings.variations));
        settings.inpaintStartBar = x->getDoubleAttribute ("inpaintStartBar", settings.inpaintStartBar);
        settings.inpaintEndBar = x->getDoubleAttribute ("inpaintEndBar", settings.inpaintEndBar);
        settings.address = x->getStringAttribute ("address", settings.address);
        settings.takeDir = x->getStringAttribute ("takeDir", settings.takeDir);
        settings.selectedSlot = juce::jlimit (0, kSlots - 1, x->getIntAttribute ("slot", 0));
        newAddress = settings.address;
    }
    settings.bars.store (juce::jlimit (1, 64, x->getIntAttribute ("bars", 4)));
    settings.loop.store (x->getBoolAttribute ("loop", true));
    std::vector<std::string> paths ((size_t) kSlots);
    {
        std::lock_guard<std::mutex> g (report.lock);
        for (auto* t : x->getChildWithTagNameIterator ("TAKE"))
        {
            const int k = t->getIntAttribute ("slot", -1);
            if (k >= 0 && k < kSlots)
            {
                paths[(size_t) k] = t->getStringAttribute ("path").toStdString();
                report.seeds[(size_t) k] = t->getStringAttribute ("seed", "-1").getLargeIntValue();
            }
        }
    }
    if (newAddress != oldAddress)
        worker->post (DaemonWorker::Action::Reconnect);
    worker->post (DaemonWorker::Action::LoadTakes, paths);
}

juce::AudioProcessor* JUCE_CALLTYPE createPluginFilter() { return new MagnetProcessor(); }
